"""Stand-in for modules/sd_hijack.py (A1111 v1.10.1): only model_hijack.comments / extra_generation_params."""


class StableDiffusionModelHijack:
    def __init__(self):
        self.comments = []
        self.extra_generation_params = {}

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}


model_hijack = StableDiffusionModelHijack()
