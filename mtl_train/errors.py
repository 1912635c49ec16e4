"""User-facing errors: each one is reported as a single line and a non-zero exit."""


class MtlError(Exception):
    """Base of every error caused by the user's input (config, data files, columns).

    The CLI prints ``mtl-train: error: <message>`` on one line and exits with status 2.
    Messages name the config key, file or column at fault.
    """


class ConfigError(MtlError):
    """A config key is unknown, has the wrong type, or holds a value out of range."""


class DataError(MtlError):
    """A data file is missing, unreadable or malformed (missing column, bad label value)."""


class TrainingError(MtlError):
    """Training cannot go on: a non-finite loss (naming the step and the task), or a model
    whose parameters became non-finite. The last good checkpoint is kept."""


class NonFiniteScores(TrainingError):
    """A model scored rows with NaN or inf: its weights are broken (raised by evaluation,
    naming the split and the output; the trainer adds the step and the last good checkpoint)."""

    def __init__(self, split: str, output: str, bad: int, rows: int):
        self.split, self.output, self.bad, self.rows = split, output, bad, rows
        super().__init__(f"non-finite scores on {split} in output '{output}' ({bad} of {rows} rows)")


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after writing ``checkpoints/last.pt``.

    Not an :class:`MtlError`: the CLI exits with ``128 + signum`` (130 for SIGINT, 143 for
    SIGTERM, the shell's convention), so a scheduler sees that the run did not finish.
    """

    def __init__(self, signum: int, step: int, checkpoint: str, run_dir: str, world_size: int = 1):
        import signal

        self.signum, self.step, self.checkpoint, self.run_dir = signum, step, checkpoint, run_dir
        name = signal.Signals(signum).name
        how = "" if world_size == 1 else f" under the same launcher with {world_size} ranks"
        super().__init__(f"interrupted by {name} after step {step}; checkpoint written to {checkpoint}; "
                         f"continue with trainer.resume={run_dir}{how}")
