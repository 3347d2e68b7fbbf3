"""The error types a user can cause. The CLI prints them as one line and exits 2."""


class ModulmError(Exception):
    """A user-facing error: bad recipe, bad file, bad argument. Printed without a traceback."""


class RecipeError(ModulmError):
    """One or more problems in a recipe; ``problems`` holds each as a one-line message
    (``warnings``: the warnings found alongside them, also one line each)."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        count = len(self.problems)
        head = self.problems[0] if count == 1 else f"{count} problems in the recipe:"
        super().__init__(head if count == 1 else head + "\n  " + "\n  ".join(self.problems))
