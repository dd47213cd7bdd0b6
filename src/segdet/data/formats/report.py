"""What a writer wrote, and what of its input it could not write: ``segdet data convert`` prints it.

Every writer takes ``report=`` (a :class:`WriteReport`) and counts in it the objects it wrote, the objects
it left out (why -> how many) and the objects it wrote without their mask (why -> how many);
:func:`segdet.data.formats.write_dataset` adds what the format cannot hold at all (semantic masks, or
objects). The writers still log each case (``segdet -v``); the report is what is said without ``-v``, in
one line per kind of loss.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class WriteReport:
    """Counts of one write.

    ``left_out`` and ``without_mask`` map a reason, read after a count (``"crowd (VOC has no crowd
    regions)"``), to a number of objects; ``notes`` counts objects written in another form than they had;
    ``semantic_left_out`` is the number of images whose semantic
    mask was not written, ``semantic_reason`` why.
    """

    objects: int = 0
    left_out: Counter[str] = field(default_factory=Counter)
    without_mask: Counter[str] = field(default_factory=Counter)
    semantic_left_out: int = 0
    semantic_reason: str = ""
    notes: Counter[str] = field(default_factory=Counter)

    def leave_out(self, reason: str, n: int = 1) -> None:
        if n:
            self.left_out[reason] += n

    def drop_mask(self, reason: str, n: int = 1) -> None:
        if n:
            self.without_mask[reason] += n

    def note(self, what: str, n: int = 1) -> None:
        """Count ``n`` objects written in another form than they had; ``what`` is read after the count
        (``"objects without a mask have their box written as their mask"``)."""
        if n:
            self.notes[what] += n

    def lines(self) -> list[str]:
        """One line per kind of loss; none when everything was written."""
        out = []
        if self.left_out:
            total = sum(self.left_out.values())
            out.append(
                f"left out {total} of {self.objects + total} objects: "
                + ", ".join(f"{n} {why}" for why, n in self.left_out.items())
            )
        if self.without_mask:
            total = sum(self.without_mask.values())
            out.append(
                f"{total} {'object' if total == 1 else 'objects'} written without "
                f"{'its' if total == 1 else 'their'} mask: "
                + ", ".join(f"{n} {why}" for why, n in self.without_mask.items())
            )
        out += [f"{n} {what}" for what, n in self.notes.items()]
        if self.semantic_left_out:
            out.append(
                f"left out the semantic masks of {self.semantic_left_out} images: {self.semantic_reason}"
            )
        return out
