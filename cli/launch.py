"""How this `xmr` is run again from a shell, and opening the page in a browser.

The commands xmr prints for a person to copy (the demo's) must run as printed: `xmr`
where that name on PATH is this program, else this program's own path (a virtual
environment's `.venv/bin/xmr` before it is activated), else `python -m xmr`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

# Browsers that draw inside the terminal: opened from `xmr serve`, they would take over the
# terminal the server logs to (and webbrowser waits for them), so they are never picked.
_CONSOLE_BROWSERS = ("www-browser", "links", "links2", "elinks", "lynx", "w3m")


def xmr_command() -> str:
    """The shell words that run this same `xmr`."""
    program = Path(sys.argv[0]) if sys.argv and Path(sys.argv[0]).name == "xmr" else None
    if program is None:  # python -m xmr, or a test runner: the script beside this Python
        beside = Path(sys.executable).parent / "xmr"
        program = beside if beside.is_file() else None
    if program is None:
        return f"{shlex.quote(sys.executable)} -m xmr"
    on_path = shutil.which("xmr")
    if on_path and Path(on_path).resolve() == program.resolve():
        return "xmr"
    return shlex.quote(str(program.absolute()))


def open_in_browser(url: str) -> str:
    """Open `url` in the person's browser, in the background, where there is a graphical
    one (or $BROWSER names one); never an error where there is none. Returns the line to
    show: what happened, and the address to open by hand otherwise."""
    import threading
    import webbrowser

    graphical = (
        os.environ.get("BROWSER")
        or sys.platform in ("darwin", "win32")
        or os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
    )
    if not graphical:
        return f"no browser on this machine: open {url} in one that can reach it"
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return f"no browser found: open {url} in one"
    if getattr(browser, "name", "") in _CONSOLE_BROWSERS and not os.environ.get("BROWSER"):
        return f"no graphical browser found: open {url} in one"
    threading.Thread(target=browser.open, args=(url,), daemon=True).start()
    return f"opening {url} in your browser"
