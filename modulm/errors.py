"""The error types a user can cause, and how an allocation failure is recognised. The CLI prints
them as one line and exits 2."""


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


class OutOfMemory(ModulmError):
    """A step, an evaluation or a build needed more memory than the device had; the message says
    what was asked for and which settings make it smaller."""


# How the allocators word a failure: torch's CPU allocator ("can't allocate memory", older
# builds "not enough memory"), CUDA, MPS and XPU ("out of memory"), the C library ("Cannot allocate memory")
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation: a ``MemoryError`` (Python's, numpy's) or a torch
    ``RuntimeError`` from an allocator (``torch.OutOfMemoryError`` is one)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc).lower() for words in _OUT_OF_MEMORY_WORDS)


def allocation_size(exc: BaseException) -> str | None:
    """The size of the allocation that failed, as ``exc`` states it (``"3.66 GiB"``), or None."""
    import re

    text = str(exc)
    found = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)
    if found:
        return human_bytes(int(found.group(1)))
    found = re.search(r"(?:tried to allocate|unable to allocate) (\d+(?:\.\d+)? ?[KMGTPE]i?B)", text, re.IGNORECASE)
    return found.group(1) if found else None


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.50 KiB"``; bytes below 1 KiB as ``"512 bytes"``."""
    if count < 1024:
        return f"{int(count)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        count /= 1024
        if round(count, 2) < 1024 or unit == "PiB":  # 1023.999 MiB is "1.00 GiB", not "1024.00 MiB"
            return f"{count:.2f} {unit}"
    raise AssertionError("unreachable")
