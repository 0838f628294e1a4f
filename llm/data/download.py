"""Downloading one file so that it is either complete on disk or absent, with retries.

The file is written under a temporary name, checked, and renamed into place; a failed attempt is
retried after backoff_s, 2·backoff_s, 4·backoff_s, … seconds. Interrupting it at any point leaves
at most a `.partial` file behind, which the next attempt overwrites.
"""

import shutil
import time
import urllib.request
from pathlib import Path
from typing import Callable

MAX_ATTEMPTS = 5
CHUNK_BYTES = 1 << 20


def download(url: str, target: Path, backoff_s: float, label: str, advice: str,
             is_valid: Callable[[Path], bool] = lambda path: True, timeout_s: float = 60) -> None:
    """Fetch `url` into `target`; `label` prefixes progress lines, `advice` ends the final error."""
    partial = target.with_name(target.name + ".partial")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK_BYTES)
            if not is_valid(partial):
                raise OSError("the downloaded file is damaged")
            partial.replace(target)
            print(f"{label}: downloaded {target.name}")
            return
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            partial.unlink(missing_ok=True)
            if attempt == MAX_ATTEMPTS:
                raise OSError(f"could not download {url} after {MAX_ATTEMPTS} attempts ({error}); {advice}") from error
            wait = backoff_s * 2 ** (attempt - 1)
            print(f"{label}: attempt {attempt}/{MAX_ATTEMPTS} for {target.name} failed ({error}); "
                  f"retrying in {wait:g}s")
            time.sleep(wait)
