"""Double of fastapi as the WebUI's API surfaces an exception: HTTPException(status_code, detail)."""


class HTTPException(Exception):
    def __init__(self, status_code, detail=None):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail
