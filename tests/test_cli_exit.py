"""The ``zoo`` command ends without the interpreter's teardown (``zoo.cli.entry``), yet as a normal exit would:
its status, its ``atexit`` handlers and its non-daemon threads' work all survive."""

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_failing_command_keeps_its_status():
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "no-such-command"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown command 'no-such-command'" in proc.stderr


def test_atexit_handlers_and_non_daemon_threads_run_before_the_quick_exit(tmp_path):
    """A handler registered before the command prints after it; a thread still sleeping when ``main`` returns
    finishes writing its file."""
    out = tmp_path / "thread.txt"
    proc = run_python(
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        f"threading.Thread(target=lambda: (time.sleep(0.5), open({str(out)!r}, 'w').write('done'))).start()\n"
        "sys.argv = ['zoo', '--help']\n"
        "from zoo.cli import entry\n"
        "entry()\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.index("usage: zoo") < proc.stdout.index("handler ran")
    assert out.read_text() == "done"


def test_an_exit_with_a_message_prints_it_and_returns_1():
    proc = run_python("import zoo.cli\n"
                      "def main():\n"
                      "    raise SystemExit('the reason')\n"
                      "zoo.cli.main = main\n"
                      "zoo.cli.entry()\n")
    assert proc.returncode == 1 and "the reason" in proc.stderr


def test_an_uncaught_exception_keeps_its_traceback():
    proc = run_python("import zoo.cli\n"
                      "def main():\n"
                      "    raise RuntimeError('deep inside')\n"
                      "zoo.cli.main = main\n"
                      "zoo.cli.entry()\n")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: deep inside" in proc.stderr
