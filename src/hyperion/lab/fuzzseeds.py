"""Seeds the fuzzer's corpus with real frames: every frame of the public captures that
carries UDP port 53 (and its DNS message alone), so mutations start from real DNS."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from hyperion.replay import CaptureError, read_frames

DNS_PORT = 53


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    corpus, captures = Path(args[0]), Path(args[1])
    corpus.mkdir(parents=True, exist_ok=True)
    if not captures.is_dir():
        print(f"no captures at {captures}; seeding from native/fuzz/corpus only")
        return 0
    written = 0
    for capture in sorted(captures.glob("*.pcap*")):
        try:
            frames = list(read_frames(capture))
        except CaptureError:
            continue
        for frame in frames:
            seeds = [frame]
            # An untagged IPv4/UDP frame to or from port 53 (no IP options): its payload alone as well.
            ports = (int.from_bytes(frame[34:36], "big"), int.from_bytes(frame[36:38], "big"))
            if len(frame) > 42 and frame[12:14] == b"\x08\x00" and frame[14] == 0x45 and frame[23] == 17 \
                    and DNS_PORT in ports:
                seeds.append(frame[42:])
            for seed in seeds:
                (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
                written += 1
    print(f"{written} seeds from {captures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
