"""Cards: told once every wanted file is uploaded or safe in the spool, and listed for status."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from daemon.clock import Clock
from daemon.journal import Journal
from daemon.sources.roots import Root, Roots

log = structlog.get_logger("dronesync.sources")

CARD_CHECK_S = 1.0


class Cards:
    """Decides when a card can be removed; ``on_removable`` hears it once per card."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        on_removable: Callable[[Root], None] | None = None,
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._on_removable = on_removable or (lambda root: None)
        self._checked_at = 0.0

    def check(self, roots: Roots) -> None:
        """Tell when every wanted file of a card is uploaded or safe in the spool."""
        now = self._clock.monotonic()
        if now - self._checked_at < CARD_CHECK_S:
            return
        self._checked_at = now
        for root in roots:
            if not (root.is_card and root.online and root.scanned):
                continue
            root.files_left = sum(self._journal.left_on(root.volume).values())
            removable = root.files_left == 0 and not root.scanning
            if removable and not root.removable:
                self._journal.flush()  # on the disk before anyone pulls the card
                log.info("card can be removed", card=root.volume, label=root.mapper.card.label)
                root.removable = True
                self._on_removable(root)
            elif not removable:
                root.removable = False

    @staticmethod
    def listing(roots: Roots) -> list[dict[str, object]]:
        """The cards in now, for ``status`` and the STATUS= line."""
        return [
            {
                "path": root.volume,
                "label": root.mapper.card.label,
                "removable": root.removable,
                "files_left": root.files_left,
            }
            for root in roots
            if root.is_card and root.online
        ]
