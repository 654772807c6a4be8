"""Where a corpus lives: a local folder, an ``http(s)://`` address, or a ``pipe:`` command that prints a file.

A corpus is named by one string, and every file of it (``manifest.json``, the shard lists, the shards, their
atom-count files) is found from that string and the file's name:

- a folder: ``corpora/mine`` → ``corpora/mine/NAME``;
- ``http://host:port/demo`` or ``https://bucket.s3.amazonaws.com/demo`` → ``http://host:port/demo/NAME``
  (object stores through their HTTP endpoints);
- ``pipe:aws s3 cp s3://bucket/demo/{} -``: a shell command with ``{}`` where the file name goes, which writes
  that file to stdout (webdataset's ``pipe:`` shards, so any store with a command-line client works).

The small files are read with :func:`read_corpus_file`; the shards are streamed by webdataset from
:func:`corpus_file_url` (curl for http, the shell for ``pipe:``).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from data_pipeline.schema import BadInputError

HTTP_TIMEOUT_S = 60
NAME_SLOT = "{}"


def is_remote(corpus: str | os.PathLike) -> bool:
    """True for an ``http(s)://`` or ``pipe:`` corpus, False for a folder."""
    text = os.fspath(corpus)
    return text.startswith(("http://", "https://", "pipe:"))


def check_location(corpus: str | os.PathLike) -> str:
    """The corpus string, after checking that a ``pipe:`` command has the ``{}`` its file names go into."""
    text = os.fspath(corpus)
    if text.startswith("pipe:") and NAME_SLOT not in text:
        raise BadInputError(
            "a pipe: corpus is a command with {} where each file name goes, e.g. "
            "'pipe:aws s3 cp s3://bucket/demo/{} -'",
            path=text,
            field="corpus",
        )
    return text


def corpus_file_url(corpus: str | os.PathLike, name: str) -> str:
    """The path or URL of file ``name`` of the corpus (a shard's is what webdataset opens)."""
    text = check_location(corpus)
    if text.startswith(("http://", "https://")):
        return text.rstrip("/") + "/" + urllib.parse.quote(name)
    if text.startswith("pipe:"):
        return text.replace(NAME_SLOT, name)
    return str(Path(text) / name)


def read_corpus_file(corpus: str | os.PathLike, name: str) -> bytes | None:
    """The bytes of file ``name`` of the corpus; None when it does not exist (http 404, no such local file).

    Any other failure (a refused connection, a command that fails) is a :class:`BadInputError` naming the URL or
    command and what it said.
    """
    url = corpus_file_url(corpus, name)
    if url.startswith(("http://", "https://")):
        return _read_http(url)
    if url.startswith("pipe:"):
        return _read_pipe(url)
    try:
        return Path(url).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BadInputError(f"cannot read ({err.strerror or err})", path=url) from None


def _read_http(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        if err.code in (403, 404):  # object stores answer 403 for a missing key without list rights
            return None
        raise BadInputError(f"HTTP {err.code} {err.reason}", path=url) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise BadInputError(f"cannot fetch ({reason})", path=url) from None


def _read_pipe(url: str) -> bytes | None:
    command = url[len("pipe:") :]
    done = subprocess.run(command, shell=True, capture_output=True, check=False)
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise BadInputError(
            f"the command exited with status {done.returncode}" + (f" ({said[-1]})" if said else ""),
            path=url,
        )
    return done.stdout
