"""Stand-in for modules/shared_state.py (A1111 v1.10.1): the job/progress State object."""


class State:
    """mirrors modules/shared_state.py:State (fields read by CFGDenoiser and samplers)."""

    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    current_image = None
    textinfo = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.job_count = -1
        self.job_no = 0
        self.current_latent = None
        self.job = job
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False

    def end(self):
        self.job = ""
        self.job_count = 0
