"""`umlroot run`: real boots, checked from the outside as a user would."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from conftest import UMLROOT, host_processes, run_umlroot

pytestmark = pytest.mark.uml


def uml_processes(tmpdir: str) -> list[int]:
    """Host processes whose command line names a run directory under tmpdir."""
    marker = b"umlroot_run=" + os.fsencode(tmpdir).hex().encode()
    return host_processes(lambda proc: marker in (proc / "cmdline").read_bytes())


def assert_no_leftovers(env: dict[str, str]) -> None:
    tmpdir = env["TMPDIR"]
    deadline = time.monotonic() + 5
    while uml_processes(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uml_processes(tmpdir) == []
    assert os.listdir(tmpdir) == []
    # UML's pid file and mconsole socket live in the run directory, never ~/.uml.
    assert not (Path.home() / ".uml").exists() or os.listdir(Path.home() / ".uml") == []


# -- the request: who, where, what --------------------------------------------------


def test_runs_as_root(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "id", "-u"], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"0\n", b"")


def test_mknod_makes_a_real_device_node(tmp_path: Path) -> None:
    result = run_umlroot(
        ["run", "--", "sh", "-c", 'mknod x c 1 3 && stat -c "%F %t,%T %u" x'], cwd=tmp_path)
    assert result.stdout == b"character special file 1,3 0\n"
    assert result.returncode == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="the host lets root read anything")
def test_host_permissions_still_bind_guest_root(tmp_path: Path) -> None:
    """Guest root is root over the overlay, not over the host: what the
    invoking user cannot read or search stays out of reach, and access(2)
    and cd say so up front (hostfs asks the host only for those)."""
    (tmp_path / "locked").write_text("secret\n")
    (tmp_path / "locked").chmod(0)
    (tmp_path / "closed").mkdir()
    (tmp_path / "closed" / "f").write_text("x\n")
    (tmp_path / "closed").chmod(0)
    try:
        script = ("test -r locked || echo not-readable; test -w locked || echo not-writable; "
                  "test -x closed || echo not-searchable; cd closed 2>/dev/null || echo no-cd; "
                  "cat locked 2>/dev/null || echo no-cat; cat closed/f 2>/dev/null || echo no-f")
        result = run_umlroot(["run", "--no-writeback", "--", "sh", "-c", script], cwd=tmp_path)
    finally:
        (tmp_path / "closed").chmod(0o755)
    assert result.stdout.decode().split() == [
        "not-readable", "not-writable", "not-searchable", "no-cd", "no-cat", "no-f"]


def test_argv_bytes_pass_unchanged(tmp_path: Path) -> None:
    args = [b"two words", b"'single' \"double\"", b"new\nline", b"\xff\xfe not utf-8", b"", b"$HOME *"]
    result = run_umlroot(["run", "--", "printf", "%s\\0", *args], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == b"".join(arg + b"\0" for arg in args)


def test_environment_cwd_and_umask(tmp_path: Path) -> None:
    env = {**os.environ, "UMLROOT_TEST_VALUE": "a b\tc"}
    script = 'printf "%s|%s|%s|%s" "$UMLROOT_TEST_VALUE" "$UMLROOT" "$(pwd)" "$(umask)"'
    result = subprocess.run(
        ["sh", "-c", 'umask 027; exec "$@"', "sh", *UMLROOT, "run", "--", "sh", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False)
    assert result.stdout.decode() == f"a b\tc|1|{tmp_path}|0027"


def test_sbin_is_on_path_inside(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    result = run_umlroot(["run", "--", "sh", "-c", "command -v mkfs.ext4"], cwd=tmp_path, env=env)
    assert result.returncode == 0
    assert result.stdout.strip().endswith(b"/mkfs.ext4")


# -- exit status -------------------------------------------------------------------------


@pytest.mark.parametrize(("script", "status"), [("exit 7", 7), ("exit 0", 0), ("kill -TERM $$", 143),
                                                ("kill -KILL $$", 137)])
def test_exit_status(tmp_path: Path, script: str, status: int) -> None:
    assert run_umlroot(["run", "--", "sh", "-c", script], cwd=tmp_path).returncode == status


def test_command_not_found(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "nosuchcmd"], cwd=tmp_path)
    assert result.returncode == 127
    assert result.stderr == b"umlroot: nosuchcmd: command not found\n"


def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run_umlroot(["run", "--", "./script"], cwd=tmp_path)
    assert result.returncode == 126
    assert result.stderr.startswith(b"umlroot: ./script: cannot execute:")


def test_missing_kernel_is_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "UMLROOT_KERNEL": str(tmp_path / "no-such-kernel")}
    result = run_umlroot(["run", "--", "true"], cwd=tmp_path, env=env)
    assert result.returncode == 125
    assert b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"umlroot: ")


def test_bad_option_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--mem", "lots", "--", "true"], cwd=tmp_path)
    assert result.returncode == 125
    assert b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"umlroot: ")


def test_mistyped_option_before_the_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--nte", "--", "true"], cwd=tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(b"umlroot: No such option '--nte'.")
    # Without `--`, options end at the command: its own options are its own.
    listed = run_umlroot(["run", "ls", "-d", "--", "."], cwd=tmp_path)
    assert (listed.returncode, listed.stdout) == (0, b".\n")


def test_deleted_current_directory_is_a_one_line_error(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    script = f'cd {shlex.quote(str(gone))} && rmdir "$PWD" && exec "$@"'
    result = subprocess.run(["sh", "-c", script, "sh", *UMLROOT, "run", "--", "true"],
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 125
    assert result.stderr.splitlines()[0] == (
        b"umlroot: the current directory no longer exists (deleted)")
    assert b"Traceback" not in result.stderr and b"--debug" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="the host lets root search any directory")
def test_unsearchable_path_directory_is_skipped_like_a_shell_does(tmp_path: Path) -> None:
    """execvp() answers EACCES (126) when any PATH directory is unsearchable;
    shells skip such a directory: not found anywhere is 127."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        env = {**os.environ, "PATH": f"{locked}:/usr/bin:/bin"}
        missing = run_umlroot(["run", "--", "nosuchcmd"], cwd=tmp_path, env=env)
        found = run_umlroot(["run", "--", "echo", "found"], cwd=tmp_path, env=env)
    finally:
        locked.chmod(0o755)
    assert (missing.returncode, missing.stderr) == (127, b"umlroot: nosuchcmd: command not found\n")
    assert (found.returncode, found.stdout) == (0, b"found\n")


def test_script_without_shebang_runs_with_sh(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("echo from-sh \"$1\"\n")
    (tmp_path / "script").chmod(0o755)
    result = run_umlroot(["run", "--", "./script", "arg"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, b"from-sh arg\n")


def test_hostname_is_the_hosts(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "sh", "-c", "hostname; uname -n"], cwd=tmp_path)
    name = socket.gethostname().encode()
    assert (result.returncode, result.stdout) == (0, name + b"\n" + name + b"\n")


# -- stdio -------------------------------------------------------------------------------------


def test_stdout_is_byte_exact_for_256_mib(tmp_path: Path) -> None:
    script = "head -c 256M /dev/urandom | tee /dev/fd/3 | sha256sum >&2"
    result = run_umlroot(["run", "--", "sh", "-c", f"{{ {script}; }} 3>&1"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0
    assert len(result.stdout) == 256 << 20
    assert result.stderr.split()[0].decode() == hashlib.sha256(result.stdout).hexdigest()


def test_tar_to_stdout_matches_tar_to_file(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_bytes(os.urandom(100_000))
    (tree / "link").symlink_to("sub/file")
    script = "tar -cf /tmp/inside.tar tree && sha256sum </tmp/inside.tar >&2 && tar -cf - tree"
    result = run_umlroot(["run", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.split()[0].decode() == hashlib.sha256(result.stdout).hexdigest()
    listing = subprocess.run(["tar", "-tf", "-"], input=result.stdout, capture_output=True, check=True)
    assert b"tree/sub/file" in listing.stdout


def test_host_files_read_byte_exact_at_any_offset(tmp_path: Path) -> None:
    """Reads through hostfs match the host byte for byte: sizes that are not
    page multiples, reads from the middle, mmap and sparse files."""
    data = os.urandom((5 << 20) + 123)
    (tmp_path / "odd").write_bytes(data)
    with open(tmp_path / "sparse", "wb") as sparse:
        sparse.seek(3 << 20)
        sparse.write(b"end")
    script = ("sha256sum < odd; tail -c 70001 odd | sha256sum; "
              "dd if=odd bs=4093 skip=777 count=300 2>/dev/null | sha256sum; "
              "python3 -c 'import mmap,hashlib; f=open(\"odd\",\"rb\"); "
              "print(hashlib.sha256(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)).hexdigest())'; "
              "sha256sum < sparse")
    result = run_umlroot(["run", "--no-writeback", "--", "sh", "-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sums = [line.split()[0].decode() for line in result.stdout.splitlines()]
    sparse = bytes(3 << 20) + b"end"
    assert sums == [hashlib.sha256(part).hexdigest() for part in (
        data, data[-70001:], data[777 * 4093:1077 * 4093], data, sparse)]


def test_stderr_is_separate(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "sh", "-c", "echo out; echo err >&2; echo out2"], cwd=tmp_path)
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"


def test_stdin_binary_with_eof(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "od", "-c"], cwd=tmp_path, input=b"a\0b")
    assert result.stdout.split(b"\n")[0].split() == [b"0000000", b"a", b"\\0", b"b"]


def test_stdin_large_is_byte_exact(tmp_path: Path) -> None:
    data = os.urandom(32 << 20)
    result = run_umlroot(["run", "--", "sha256sum"], cwd=tmp_path, input=data, timeout=300)
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_empty_stdin_returns_at_once(tmp_path: Path) -> None:
    with open(os.devnull, "rb") as devnull:
        result = run_umlroot(["run", "--", "cat"], cwd=tmp_path, stdin=devnull.fileno())
    assert (result.returncode, result.stdout) == (0, b"")


def test_command_that_ignores_stdin_does_not_wait_for_it(tmp_path: Path) -> None:
    # Our stdin never reaches EOF; `true` never reads it.
    with subprocess.Popen([*UMLROOT, "run", "--", "true"], cwd=tmp_path,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        assert proc.wait(timeout=60) == 0
        assert proc.stdin is not None
        proc.stdin.close()


def test_closed_stdout_and_stdin_are_harmless(tmp_path: Path) -> None:
    script = f'{" ".join(UMLROOT)} run -- sh -c "echo out; echo err >&2" >&- <&-; echo status:$?'
    result = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, timeout=120,
                            check=False)
    assert (result.stdout, result.stderr) == (b"status:0\n", b"err\n")


def test_broken_pipe_gives_cmd_sigpipe(tmp_path: Path) -> None:
    script = f'{" ".join(UMLROOT)} run -- yes | head -n 2; echo "status:${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=120,
                            check=False)
    assert result.stdout == b"y\ny\nstatus:141\n"


def test_no_kernel_messages_reach_the_user(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--", "true"], cwd=tmp_path)
    assert (result.stdout, result.stderr) == (b"", b"")


def test_verbose_shows_log_and_timing_on_stderr(tmp_path: Path) -> None:
    result = run_umlroot(["run", "--verbose", "--", "echo", "hi"], cwd=tmp_path)
    assert result.stdout == b"hi\n"
    assert b"Linux version" in result.stderr
    assert b"umlroot: timing: scratch" in result.stderr


def test_concurrent_runs_do_not_interfere(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    procs = [subprocess.Popen([*UMLROOT, "run", "--", "sh", "-c", f"sleep 1; echo run{i}"],
                              cwd=tmp_path, env=private_tmp, stdout=subprocess.PIPE)
             for i in range(3)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert outputs == [b"run0\n", b"run1\n", b"run2\n"]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert_no_leftovers(private_tmp)


# -- terminals ---------------------------------------------------------------------------------------


def spawn_in_pty(args: list[str], cwd: Path) -> pexpect.spawn:
    return pexpect.spawn(UMLROOT[0], [*UMLROOT[1:], *args], cwd=str(cwd), timeout=60,
                         dimensions=(30, 100))


def test_stdout_is_a_tty_exactly_when_ours_is(tmp_path: Path) -> None:
    check = "[ -t 1 ] && echo TTY || echo NOTTY"
    piped = run_umlroot(["run", "--", "sh", "-c", check], cwd=tmp_path)
    assert piped.stdout == b"NOTTY\n"
    child = spawn_in_pty(["run", "--", "sh", "-c", check + "; stty size"], tmp_path)
    child.expect("TTY")
    assert child.before.strip() == b""  # "NOTTY" would have matched too late
    child.expect("30 100")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_interactive_session_and_terminal_restored(tmp_path: Path) -> None:
    script = (f"stty -g; {' '.join(UMLROOT)} run -- sh -c "
              "'read line; echo got:$line; exit 3'; echo status:$?; stty -g")
    shell = pexpect.spawn("sh", ["-c", script], cwd=str(tmp_path), timeout=60)
    shell.expect(r"([0-9a-f:]+)\r\n")
    before = shell.match.group(1)
    time.sleep(1)
    shell.send("hello\r")
    shell.expect("got:hello")
    shell.expect("status:3")
    shell.expect(r"([0-9a-f:]+)\r\n")
    assert shell.match.group(1) == before
    shell.expect(pexpect.EOF)


def test_ctrl_c_on_the_terminal_reaches_command(tmp_path: Path) -> None:
    script = 'trap "echo caught; exit 5" INT; echo ready; sleep 60 & wait'
    child = spawn_in_pty(["run", "--", "sh", "-c", script], tmp_path)
    child.expect("ready")
    child.sendintr()
    child.expect("caught")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5


# -- signals, timeout, crashes: and nothing left behind ---------------------------------------------


def start_and_wait_for(marker: bytes, args: list[str], cwd: Path, env: dict[str, str],
                       stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*UMLROOT, *args], cwd=cwd, env=env, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == marker + b"\n", proc.stderr.read() if proc.stderr else b""
    return proc


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_reaches_command(tmp_path: Path, private_tmp: dict[str, str], signum: int,
                                status: int) -> None:
    proc = start_and_wait_for(b"started", ["run", "--", "sh", "-c", "echo started; exec sleep 60"],
                              tmp_path, private_tmp)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == status
    assert_no_leftovers(private_tmp)


def test_command_may_catch_the_signal(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    script = 'trap "echo caught; exit 3" INT; echo started; sleep 60 & wait'
    proc = start_and_wait_for(b"started", ["run", "--", "sh", "-c", script], tmp_path, private_tmp)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (3, b"caught\n")
    assert_no_leftovers(private_tmp)


def test_timeout(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    started = time.monotonic()
    result = run_umlroot(["run", "--timeout", "2", "--", "sleep", "60"], cwd=tmp_path, env=private_tmp)
    assert result.returncode == 124
    assert time.monotonic() - started < 20
    assert b"timed out" in result.stderr
    assert_no_leftovers(private_tmp)


def test_guest_crash_is_reported(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    result = run_umlroot(["run", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 10"],
                         cwd=tmp_path, env=private_tmp)
    assert result.returncode == 125
    assert result.stderr.startswith(b"umlroot: the guest crashed")
    assert_no_leftovers(private_tmp)


def test_umlroot_killed_outright_takes_uml_with_it(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    proc = start_and_wait_for(b"started", ["run", "--", "sh", "-c", "echo started; exec sleep 60"],
                              tmp_path, private_tmp)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while uml_processes(private_tmp["TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uml_processes(private_tmp["TMPDIR"]) == []


def uml_alive(pid_file: Path) -> bool:
    try:
        return Path(f"/proc/{int(pid_file.read_text())}").exists()
    except (OSError, ValueError):
        return False


def test_killed_run_is_swept_by_the_next_and_live_runs_are_untouched(
        tmp_path: Path, private_tmp: dict[str, str]) -> None:
    """kill -9 of umlroot: UML dies with it (PDEATHSIG), its scratch data is
    already unlinked, and the next run removes the directory; a run going on
    at the same time keeps its own."""
    tmpdir = Path(private_tmp["TMPDIR"])
    live = start_and_wait_for(b"started", ["run", "--", "sh", "-c",
                                           "echo started; read line; echo got:$line"],
                              tmp_path, private_tmp, stdin=subprocess.PIPE)
    live_dirs = set(tmpdir.iterdir())
    assert len(live_dirs) == 1
    victim = start_and_wait_for(b"started", ["run", "--", "sh", "-c",
                                             "echo started; exec sleep 60"],
                                tmp_path, private_tmp)
    (victim_dir,) = set(tmpdir.iterdir()) - live_dirs
    # The scratch disk is unlinked once the guest has it mounted.
    assert not (victim_dir / "scratch.img").exists()
    uml_pid_file = victim_dir / "uml" / "pid"
    assert uml_alive(uml_pid_file)
    victim.kill()
    assert victim.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while uml_alive(uml_pid_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not uml_alive(uml_pid_file)
    assert victim_dir.exists()  # nobody removed it: a killed process cannot

    after = run_umlroot(["run", "--", "true"], cwd=tmp_path, env=private_tmp)
    assert after.returncode == 0, after.stderr
    assert set(tmpdir.iterdir()) == live_dirs
    out, _ = live.communicate(b"still-here\n", timeout=60)
    assert (live.returncode, out) == (0, b"got:still-here\n")
    assert_no_leftovers(private_tmp)


def test_keep_scratch_says_where(tmp_path: Path, private_tmp: dict[str, str]) -> None:
    result = run_umlroot(["run", "--keep-scratch", "--", "true"], cwd=tmp_path, env=private_tmp)
    assert result.returncode == 0
    kept = [Path(private_tmp["TMPDIR"]) / name for name in os.listdir(private_tmp["TMPDIR"])]
    assert len(kept) == 1 and str(kept[0]).encode() in result.stderr
    assert (kept[0] / "console.log").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
