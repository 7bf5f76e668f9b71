"""Run the BIDS App in this process and SIGKILL it at a chosen point of its write phase.

``python tests/kill_app.py POINT ARGV...``: the App runs as ``masker-wf ARGV...`` would,
except that one function of its write phase is wrapped to send this process SIGKILL (the real
signal: nothing is cleaned up) when POINT is reached:

- ``before-write``: a run's derivatives are about to be written;
- ``compressing``: the cleaned BOLD is half-way through its gzip stream;
- ``between-files``: the cleaned BOLD (and its sidecar) is written, the next file is not;
- ``before-record``: every file is written, the provenance record is not;
- ``committing``: two files of the set were renamed into place, the others were not.
"""

import functools
import os
import signal
import sys


def _die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(module, name, should_die):
    original = getattr(module, name)
    calls = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls.append(1)
        if should_die(len(calls), *args, **kwargs):
            _die()
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def _compressing(module):
    original = module.gzip_writer

    class HalfWritten:
        """A gzip writer that dies half-way through its first chunk."""

        def __init__(self, writer, stream):
            self.writer, self.stream = writer, stream

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return self.writer.__exit__(*exc_info)

        def write(self, data):
            self.writer.write(data[: len(data) // 2])
            self.writer.flush()
            self.stream.flush()
            _die()

    def gzip_writer(stream, **kwargs):
        return HalfWritten(original(stream, **kwargs), stream)

    module.gzip_writer = gzip_writer


def install(point: str) -> None:
    """Wrap the function where ``point`` is reached."""
    from masker_wf import _io
    from masker_wf.app import outputs
    from masker_wf.bids import derivatives

    if point == "before-write":
        _on_call(outputs, "write_derivatives", lambda n, *a, **k: True)
    elif point == "compressing":
        _compressing(_io)
    elif point == "between-files":
        written = []

        def after_the_bold(n, path, *args, **kwargs):
            # Every file goes through this one atomic writer: die at the first file
            # started after the cleaned BOLD was complete.
            if written:
                return True
            if str(path).endswith("_bold.nii.gz"):
                written.append(path)
            return False

        _on_call(_io, "_write_atomically", after_the_bold)
    elif point == "before-record":
        _on_call(
            derivatives,
            "write_json",
            lambda n, path, *a, **k: str(path).endswith("_provenance.json"),
        )
    elif point == "committing":
        from masker_wf.app import commit

        _on_call(commit, "_move", lambda n, *a, **k: n == 3)
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from masker_wf.cli.run import main

    sys.exit(main(sys.argv[2:]))
