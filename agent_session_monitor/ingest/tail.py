"""Read the access log and its rotations: every complete line once, oldest first.

Files are known by identity, not by name (failure-scenarios.md, B0-B2): ``(st_dev,
st_ino)`` confirmed by a SHA-256 fingerprint of the first bytes, or the fingerprint
alone, which finds the copy ``copytruncate`` made and the decompressed head of a
``.gz``. Offsets are always at line boundaries; a half-written last line waits.
Here: matching the files found to the known sources, and the descriptors held open
between polls; where the files are is rotations.py's, reading their lines read_lines.py's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO

from ..confine import NotRegularFile, OutsideAllowed, open_log
from .logfile import (
    FP_LEN, MIN_FP_LEN, TAIL_LEN, GzipContent, LogFile, TailEvent, held_key, read_head, sha,
    tail_hash,
)
from .read_lines import ReadLinesMixIn
from .rotations import discover
from .state import SourceState

ORPHAN_TTL = 7 * 86400.0


class Tailer(ReadLinesMixIn):
    """Finds the log files of one or more paths each poll and reads their new lines.

    ``poll_files()`` matches files to the known sources (mutating them and adding new
    ones); ``lines()`` yields the new complete lines of one. With ``keep_open`` (follow
    mode), files stay open between polls, so bytes written to a file after it was
    renamed away or deleted are still read until it has been quiet for ``rotate_wait``.
    """

    def __init__(self, patterns: list[str], max_rotate: int, sources: list[SourceState],
                 *, keep_open: bool = False, rotate_wait: float = 30.0,
                 max_line: int = 64 * 2**20, allowed: list[Path] | None = None) -> None:
        self.patterns = patterns
        self.allowed = allowed        # None: no allow-list (a library caller's choice)
        self._refused: set[tuple[str, str]] = set()
        self.max_rotate = max_rotate
        self.sources = sources
        self.keep_open = keep_open
        self.rotate_wait = rotate_wait
        self.max_line = max_line
        self.events: list[TailEvent] = []
        # Descriptors kept open between polls, by source (fp, dev, ino): each is owned
        # by its source alone, never shared with a file opened by path.
        self._held: dict[tuple[str, int, int], tuple[BinaryIO, int, int]] = {}
        self._quiet_since: dict[str, tuple[int, float]] = {}     # fp -> (size, monotonic)
        # What the .gz files found last poll were found to hold, by (dev, ino, size,
        # mtime): a .gz left unmatched (a second copy, an older one) is met every poll.
        self._gz_contents: dict[tuple, GzipContent] = {}

    # -- matching ------------------------------------------------------------------

    def poll_files(self) -> list[tuple[SourceState, LogFile]]:
        """Open every candidate and pair it with its source; oldest first.

        Every file object has one owner: a path opened this poll belongs to the pair it
        is matched with (or is closed), a descriptor held from an earlier poll belongs
        to its source and is read only while no path leads to its inode any more.
        """
        self.events = []
        files, unreadable = self._open_candidates()
        matched: dict[int, tuple[SourceState, LogFile]] = {}   # index in files
        taken: set[int] = set()                                 # id() of matched sources
        known = {id(src) for src in self.sources}

        # 0. A held descriptor of an inode that a path still leads to adds nothing: the
        #    path's fresh descriptor reads the same inode (it cannot have been reused
        #    while we hold it), and if it was truncated, what it held is gone from both.
        reachable = {(lf.dev, lf.ino) for lf in files}
        for key, (_f, dev, ino) in list(self._held.items()):
            if (dev, ino) in reachable:
                self._drop_held(key)

        by_inode: dict[tuple[int, int], list[SourceState]] = {}
        for src in self.sources:
            by_inode.setdefault((src.dev, src.ino), []).append(src)

        # 1. Same inode and same head: the file we know, wherever it moved.
        for i, lf in enumerate(files):
            # Newest first: after a truncation or a reused inode, the file's current identity.
            for src in reversed(by_inode.get((lf.dev, lf.ino), ())):
                if id(src) not in taken and src.gz == lf.gz and lf.head_matches(src):
                    if not (lf.gz and lf.read_whole(src)) and not lf.could_be_copy_of(src):
                        # Truncated (copytruncate) or rewritten, or the inode reused,
                        # its head the same as before (a client's fixed first request,
                        # a NUL hole): a copy found in step 3 holds what we read; this
                        # file is a new one. A .gz read whole is not decompressed
                        # again to be checked.
                        continue
                    matched[i] = (src, lf)
                    taken.add(id(src))
                    break
        # 2. Files held open that no path leads to any more (renamed away, deleted, a
        #    symlink swapped): drain them through the old descriptor.
        draining = self._held_orphans(taken)
        # 3. Same head, other inode: a copytruncate copy or a compressed rotation; a
        #    copy with nothing new in it; or a new file that begins as a known one.
        for i, lf in enumerate(files):
            if i in matched:
                continue
            same_head = [src for src in self.sources if lf.head_matches(src)]
            if lf.gz:
                free, skip = self._place_gz(lf, same_head, taken, matched, draining)
            else:
                # (A source found this poll has read nothing yet: every file that
                # begins as it "holds what was read of it", and is no copy for that;
                # _same_bytes compares the two files instead.)
                copy_of = [src for src in same_head if (src.offset or id(src) not in taken)
                           and lf.could_be_copy_of(src)]
                free = next((src for src in copy_of if id(src) not in taken), None)
                skip = bool(copy_of) or bool(same_head) and (
                    self._older_copy(lf, same_head, matched)
                    or self._same_bytes(lf, same_head, taken, matched))
            if free is not None:
                matched[i] = (free, lf)
                taken.add(id(free))
                continue
            if skip:
                # A second copy of a file read through another (.2 beside .2.gz), or one
                # made before lines we have read since (copytruncate's copy of a file we
                # read on to its truncation, a gzip of a file we drained): nothing new.
                continue
            src = self._adopt(lf, taken, collides=bool(same_head))
            if src is not None:
                matched[i] = (src, lf)
        result = []
        for i, lf in enumerate(files):
            if i in matched:
                # (each holds what was read of its source: could_be_copy_of, above)
                result.append(self._check_in_place(*matched[i], verified=True))
            else:
                lf.file.close()
        result = draining + result
        if not unreadable:
            # A live log rotated out of reach left every kept rotation to files born
            # after it: as many new rotated files as --max-rotate keeps.
            rotated_in = sum(not lf.live and not lf.orphan and id(src) not in known
                             for src, lf in result)
            self._mark_missing(taken, reachable,
                               out_of_reach=0 < self.max_rotate <= rotated_in)
        return result

    def _open_candidates(self) -> tuple[list[LogFile], bool]:
        files: list[LogFile] = []
        contents, self._gz_contents = self._gz_contents, {}
        before = {key[:2]: key[2:] for key in contents}   # .gz (dev, ino) -> (size, mtime)
        seen_inodes: set[tuple[int, int]] = set()
        unreadable = False
        for path, live in discover(self.patterns, self.max_rotate):
            try:
                f = open_log(path, self.allowed)
            except (FileNotFoundError, NotRegularFile):
                continue
            except OutsideAllowed as e:
                self._refuse(e)
                continue
            except OSError as e:
                unreadable = True
                self.events.append(TailEvent("unreadable", f"cannot read {path}: {e.strerror}"))
                continue
            try:
                st = os.fstat(f.fileno())
                key = (st.st_dev, st.st_ino)
                if key in seen_inodes:
                    f.close()
                    continue
                seen_inodes.add(key)
                gz, head = read_head(f)
            except OSError as e:
                f.close()
                unreadable = True
                self.events.append(TailEvent("unreadable", f"cannot read {path}: {e.strerror}"))
                continue
            lf = LogFile(path, f, st.st_dev, st.st_ino, st.st_size, st.st_mtime, gz, head, live)
            if gz:
                key += (st.st_size, st.st_mtime_ns)
                lf.content = contents.get(key)
                lf.unchanged = lf.content is not None
                if lf.content is None:
                    lf.content = GzipContent()
                    lf.growing = key[:2] in before
                self._gz_contents[key] = lf.content
            files.append(lf)
        return files, unreadable

    def _refuse(self, e: OutsideAllowed) -> None:
        """A file that leads outside the allow-list: never read; said once per name and
        destination (a follow-mode poll every second must not repeat it)."""
        if (e.path, e.real) in self._refused:
            return
        self._refused.add((e.path, e.real))
        self.events.append(TailEvent(
            "refused", f"refusing to read {e.path}: it resolves to {e.real}, outside the "
            "allowed log directories (a symlink out of them?); it is skipped"))

    def _held_orphans(self, taken: set[int]) -> list:
        """Pairs for the held descriptors no path leads to; each owns its descriptor."""
        by_key = {held_key(src): src for src in self.sources}
        result = []
        for key, (f, dev, ino) in list(self._held.items()):
            src = by_key.get(key)
            if src is None or id(src) in taken:
                self._release(key)    # its source is gone, or matched through a path
                continue
            try:
                st = os.fstat(f.fileno())
                gz, head = read_head(f)
            except OSError:
                self._release(key)
                continue
            lf = LogFile(src.path, f, dev, ino, st.st_size, st.st_mtime, gz, head, False,
                         orphan=True)
            if gz == src.gz and lf.head_matches(src):
                taken.add(id(src))
                src.live = False      # renamed away or deleted: no longer the live log
                result.append(self._check_in_place(src, lf))
                continue
            # Truncated (and grown again) after the last read, then renamed away or
            # deleted: the descriptor now shows another file. The old one is over (what
            # it held past our offset went with the truncation); the new one is read
            # from its start through the same descriptor, which passes to it.
            del self._held[key]
            self._quiet_since.pop(key[0], None)
            new = self._adopt(lf, taken)
            if new is None:
                f.close()
            else:
                result.append((new, lf))
        return result

    def _adopt(self, lf: LogFile, taken: set[int], collides: bool = False) -> SourceState | None:
        """A source for a file no known source matched: a new one, unless its identity
        is our own under a head we could not confirm (a hand-edited head_fp), which
        stays one source: never a second with the same keys. ``collides``: its head is
        a known file's, yet it is not that file nor a copy of it (a client's fixed first
        request at the head of each new log, a writer's NUL hole after copytruncate):
        its ``fp``, the namespace of its lines' keys, gets a random salt, or its lines
        would take the known file's keys at the same offsets and be dropped as read."""
        src = self._new_source(lf)
        if src is None:
            return None
        known = next((s for s in self.sources if held_key(s) == held_key(src)), None)
        if known is not None and not collides:
            if id(known) in taken:
                return None
            known.head_fp, known.head_len = src.fp, src.fp_len
            src = known
        else:
            if collides:
                src.head_fp, src.head_len = src.fp, src.fp_len   # matched by its head
                src.fp = sha(lf.head[:src.fp_len] + os.urandom(16))
            self.sources.append(src)
        taken.add(id(src))
        return src

    def _older_copy(self, lf: LogFile, same_head: list[SourceState], matched: dict) -> bool:
        """Whether ``lf``, which begins as the known files ``same_head`` but is none of
        them nor a copy of one, is a copy of one made before lines we read since (then
        it is smaller than where reading stopped, and as far as its bytes go it is that
        file). Never at the live path: no rotation copies a file there, and a file there
        that begins as a known one is new. When unsure, it is new: its lines read again
        are recognised by their bytes (counted duplicates), while a new file dropped
        would never be billed."""
        if lf.live:
            return False
        current = {id(src): f for src, f in matched.values()}   # each source's file now
        for src in same_head:
            if lf.size > src.offset:
                continue   # it differs from src at src.offset (could_be_copy_of)
            f = current.get(id(src))
            if f is None:
                # src's bytes are nowhere to compare with: truncated (copytruncate's
                # race), deleted, rotated out of reach, its inode perhaps reused. Not
                # a sign of a copy: read it (what was read is recognised by its bytes).
                continue
            if not f.gz and f.size < lf.size:
                return True   # truncated since: nothing left to compare
            try:
                theirs = f.bytes_at(lf.size)   # (a .gz decompressed as far as that)
                if theirs[0] is None or theirs == lf.bytes_at(lf.size):
                    return True
            except OSError:
                return True
        return False

    @staticmethod
    def _same_bytes(lf: LogFile, same_head: list[SourceState], taken: set[int],
                    matched: dict) -> bool:
        """Whether ``lf`` and the file of a source found this poll (nothing read of it
        yet) are copies of one file, equal where the shorter ends: copytruncate's copy
        still being written beside the live log it copies. Then ``lf`` waits for the
        next poll, as a second copy; two files that merely begin alike are both read."""
        current = {id(src): f for src, f in matched.values()}
        for src in same_head:
            f = current.get(id(src))
            if src.offset or id(src) not in taken or f is None:
                continue
            try:
                end = f.gz_content().end_of_lines(f.file) if f.gz else f.size
                at = min(lf.size, end)
                if at and f.bytes_at(at) == lf.bytes_at(at):
                    return True
            except OSError:
                continue
        return False

    def _place_gz(self, lf: LogFile, same_head: list[SourceState], taken: set[int],
                  matched: dict, draining: list) -> tuple[SourceState | None, bool]:
        """For a .gz that begins as the known files ``same_head`` (step 3): the free one
        whose copy it is (it holds what was read of it: its decompressed bytes, not its
        length, which a file that merely begins alike can share), else whether it adds
        nothing to a file being read this poll (a second copy, .2.gz beside .2; a copy
        made before lines read since): all it holds is that file's, byte for byte where
        it ends. When unsure it is new: read (what was read before is recognised by its
        bytes, never billed twice), while a file skipped would never be billed.

        Cost: the .gz is decompressed once while it is unchanged (LogFile.content keeps
        what was found), as far as the furthest offset asked, or to its end when it is
        compared with the files being read."""
        if not same_head:
            return None, False
        if lf.growing and not lf.live:
            # Changed since the last poll: gzip is still writing it (the file it is made
            # from is still there, and read). Checked when it stops changing: decompressed
            # now it would be decompressed again at every poll while gzip works.
            return None, True
        content = lf.gz_content()
        ids = {id(src) for src in same_head}
        current = [] if lf.live else [   # (no rotation copies a file to the live path)
            f for src, f in draining + list(matched.values()) if id(src) in ids]
        # Furthest first: of two files it holds what was read of, it is the copy of the
        # one read further (the other merely begins as that one).
        free = sorted((src for src in same_head if id(src) not in taken),
                      key=lambda src: -src.offset)
        # One pass for every offset (to its end if it is to be compared with files).
        content.scan(lf.file, [src.offset for src in free], to_end=bool(current))
        for src in free:
            if content.holds(lf.file, src):
                return src, False
        if not current:
            return None, False
        end = content.end_of_lines(lf.file)
        mine = content.bytes_at(lf.file, end)
        for f in current:
            # The lines it holds are all in ``f``, which is read this poll. (Not "holds
            # what was read of f's source": a source found this poll has read nothing.)
            try:
                if (f.gz or f.size >= end) and f.bytes_at(end) == mine:
                    return None, True
            except OSError:
                return None, True   # as _older_copy: cannot compare, and the file is there
        return None, False

    def _new_source(self, lf: LogFile) -> SourceState | None:
        head = lf.head
        # Fingerprint only a head that holds a complete line or the full length (a
        # half-written first line could still change), and not a tiny one.
        if len(head) < MIN_FP_LEN or (len(head) < FP_LEN and b"\n" not in head):
            return None
        n = min(len(head), FP_LEN)
        return SourceState(fp=sha(head[:n]), fp_len=n, dev=lf.dev, ino=lf.ino,
                           path=lf.path, gz=lf.gz)

    def _check_in_place(self, src: SourceState, lf: LogFile,
                        verified: bool = False) -> tuple[SourceState, LogFile]:
        """Same file: was it truncated (T1/T2) or rewritten in place (T7) under us?
        ``verified``: matched because it holds what was read (no second tail hash)."""
        if src.missing_since is not None:
            src.missing_since = None
            src.loss_reported = False
        src.path, src.dev, src.ino, src.gz, src.live = lf.path, lf.dev, lf.ino, lf.gz, lf.live
        if src.matching()[1] < FP_LEN and len(lf.head) > src.matching()[1]:
            n = min(len(lf.head), FP_LEN)
            src.head_fp, src.head_len = sha(lf.head[:n]), n
        if lf.gz:
            return src, lf
        seen, src.size = src.size, lf.size   # seen: a pass cut short knows what it missed
        if lf.size < src.offset:
            # Smaller than where reading stopped, same identity: truncated (and perhaps
            # grown again), or a state saved ahead of the file. Read it again from its
            # start: lines already stored are recognised by their key and skipped, so
            # each line is counted exactly once. Only bytes seen but never read are lost.
            lost = max(seen - src.offset, 0)
            if lost:
                self.events.append(TailEvent(
                    "data_loss", f"data loss: {lf.path} was truncated with {lost:,} unread "
                    f"bytes after offset {src.offset:,}", lost))
            self.events.append(TailEvent(
                "truncated", f"{lf.path} is smaller ({lf.size:,} bytes) than where reading "
                f"stopped ({src.offset:,}): truncated; reading it again from the start "
                "(lines already stored are skipped)", quiet=True))
            src.offset = 0
            src.tail = src.line = ""
        elif not verified and src.tail and src.offset >= TAIL_LEN and tail_hash(
                lf.file, src.offset) not in (
                src.tail, None):   # None: it shrank since fstat; the next poll sees it
            self.events.append(TailEvent(
                "rewritten", f"{lf.path} was rewritten in place before offset {src.offset}; "
                "re-reading it (lines already stored are recognised and skipped)"))
            src.offset = 0
        return src, lf

    def _mark_missing(self, taken: set[int], reachable: set[tuple[int, int]],
                      out_of_reach: bool) -> None:
        now = time.time()
        keep = []
        for src in self.sources:
            if id(src) in taken:
                keep.append(src)
                continue
            if src.missing_since is None:
                src.missing_since = now
            if not src.loss_reported and not src.gz_complete:
                gone = (src.dev, src.ino) not in reachable   # not truncated in place
                self._report_loss(src, out_of_reach=src.live and gone and out_of_reach)
            if now - src.missing_since < ORPHAN_TTL:
                keep.append(src)
        self.sources[:] = keep

    def _report_loss(self, src: SourceState, out_of_reach: bool) -> None:
        """A file we know is no longer found. Call it data loss only when lines really
        were lost: bytes seen but not read (their number is known), or a live log that
        rotated out of reach while we were stopped (it is gone, no path leads to its
        inode, and every kept rotation is a file we never saw; how much was written to
        it after the last read cannot be known). A live log truncated, deleted, re-created
        or swapped behind a symlink after it was read to its end lost nothing we can
        know of: that is counted (``file_events.replaced``), not cried as a loss. In
        follow mode the descriptor held open drains a deleted or renamed file to its end.
        """
        lost = max(src.size - src.offset, 0)
        if lost:
            detail = f"with {lost:,} unread bytes after offset {src.offset:,}"
        elif out_of_reach:
            detail = (f"while it was the live log, read up to offset {src.offset:,}: it "
                      f"was rotated past --max-rotate {self.max_rotate} before it could be "
                      "read to its end (how many bytes is unknown)")
        else:
            if src.live:
                self.events.append(TailEvent(
                    "replaced", f"{src.path} (fp {src.fp[:12]}) was replaced after it was "
                    f"read to its end (offset {src.offset:,})", quiet=True))
                src.loss_reported = True
            return
        self.events.append(TailEvent(
            "data_loss", f"data loss: {src.path} (fp {src.fp[:12]}) is gone {detail} "
            "(poll more often than logs rotate, or raise --max-rotate)", lost))
        src.loss_reported = True

    def close_unheld(self, pairs: list[tuple[SourceState, LogFile]]) -> None:
        """Close this poll's files except those kept open for the next one."""
        held = {id(h[0]) for h in self._held.values()}
        for _src, lf in pairs:
            if id(lf.file) not in held and not lf.file.closed:
                lf.file.close()

    def release_all(self) -> None:
        for key in list(self._held):
            self._release(key)

    def _drop_held(self, key: tuple[str, int, int]) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held[0].close()

    def _release(self, key: tuple[str, int, int]) -> None:
        self._drop_held(key)
        self._quiet_since.pop(key[0], None)
