//! `cargo xtask kernels`: the kernel matrix. Boots each kernel of [`KERNELS`] under QEMU and runs
//! the HTTP smoke test inside it with the real probes: a Python server traced by PID, five curl
//! requests, five SERVER spans, and ztrace stopping by itself when the traced process exits
//! (which exercises the exit probe's path for kernels without `group_dead`), all under its
//! seccomp allow-list (`Seccomp: 2`). This machine's own
//! kernel is covered by the whole suite (`cargo xtask test`).
//!
//! The guest needs no disk image: an initramfs (static busybox, the kernel's virtio and 9p
//! modules in dependency order from `modules.dep`) mounts this machine's root read-only over
//! virtio-9p and chroots into it, so the guest runs the interpreter and curl the suite uses; the
//! ztrace binary and the backend travel in the initramfs (the guest mounts fresh tmpfs over
//! `/tmp` and `/run`, which would hide a work tree there). QEMU runs with TCG (software emulation): on these machines `/dev/kvm` creates VMs
//! but a KVM guest never printed a line of its kernel in 60 s, while TCG boots in seconds.

use std::{
    fs,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Debian packages the matrix needs on the host.
pub const PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "cpio", "kmod"];

/// (name in reports, the Debian package name pattern of the kernel). Debian 12's stock kernel is
/// 6.1 (no `sock:sock_send_length`, so the syscall path is used; no `group_dead` in
/// `sched_process_exit`). The newest ABI of the series in the archive is taken, and printed.
const KERNELS: &[(&str, &str)] = &[(
    "Debian 12 stock (6.1)",
    r"^linux-image-6\.1\.0-[0-9]+-amd64$",
)];

/// Modules the guest loads (with their dependencies) to mount the host's root over virtio-9p.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The longest a guest may run (boot, smoke test, power-off) before it counts as hung.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub fn kernels(root: &Path, ztrace: &Path) -> Result<()> {
    let work = root.join("target/kernels");
    fs::create_dir_all(&work)?;
    let mut failed = Vec::new();
    for (name, pattern) in KERNELS {
        let package = newest_package(pattern)?;
        crate::say(&format!("kernel matrix: {name}: {package}"));
        let started = Instant::now();
        match boot_and_smoke(root, &work, &package, ztrace) {
            Ok(lines) => {
                for l in lines {
                    crate::say(&format!("  {l}"));
                }
                crate::say(&format!(
                    "kernel matrix: {name}: PASS in {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
            }
            Err(e) => {
                crate::say(&format!("kernel matrix: {name}: FAIL: {e:#}"));
                failed.push(*name);
            }
        }
    }
    crate::say(&format!(
        "kernel matrix: this machine's kernel ({}) is covered by the whole suite",
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim()
    ));
    if !failed.is_empty() {
        bail!("the smoke test failed on: {}", failed.join(", "));
    }
    Ok(())
}

fn newest_package(pattern: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", pattern])
        .output()
        .context("apt-cache")?;
    let abi = |name: &str| -> u32 {
        name.split('-')
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|n| abi(n))
        .map(str::to_string)
        .with_context(|| format!("no Debian package matches {pattern} (apt-get update?)"))
}

fn boot_and_smoke(root: &Path, work: &Path, package: &str, ztrace: &Path) -> Result<Vec<String>> {
    let dir = work.join(package);
    let tree = dir.join("tree");
    if !tree.join("boot").exists() {
        fs::create_dir_all(&dir)?;
        crate::run(
            Command::new("apt-get")
                .args(["download", package])
                .current_dir(&dir),
        )?;
        let deb = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    let release = fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .next()
        .context("the kernel package has no modules")?
        .file_name()
        .to_string_lossy()
        .into_owned();
    crate::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&tree)
            .arg(&release)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
    )?;
    let modules_dir = tree.join("lib/modules").join(&release);
    let order = load_order(
        &fs::read_to_string(modules_dir.join("modules.dep"))?,
        GUEST_MODULES,
    )?;

    let initrd = dir.join("initrd");
    if initrd.exists() {
        fs::remove_dir_all(&initrd)?;
    }
    for d in ["bin", "modules", "proc", "sys", "dev", "host", "payload"] {
        fs::create_dir_all(initrd.join(d))?;
    }
    fs::copy("/bin/busybox", initrd.join("bin/busybox"))
        .context("/bin/busybox (apt-get install busybox-static)")?;
    let mut names = Vec::new();
    for rel in &order {
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module path")?
            .to_string();
        fs::copy(modules_dir.join(rel), initrd.join("modules").join(&name))?;
        names.push(name);
    }
    write_exec(&initrd.join("init"), &init_script(&names))?;
    // What the guest runs travels in the initramfs, not through the shared root: the guest mounts
    // fresh tmpfs over /tmp and /run (the share is read-only), which would hide a work tree there.
    fs::copy(ztrace, initrd.join("payload/ztrace"))
        .with_context(|| format!("copying {}", ztrace.display()))?;
    fs::copy(
        root.join("tests/apps/two_tier.py"),
        initrd.join("payload/two_tier.py"),
    )?;
    write_exec(&initrd.join("payload/smoke.sh"), SMOKE_SCRIPT)?;
    let image = dir.join("initrd.gz");
    crate::run(
        Command::new("sh")
            .args(["-c", "find . | cpio -o -H newc --quiet | gzip -1 > \"$0\""])
            .arg(&image)
            .current_dir(&initrd),
    )?;
    let kernel = tree.join(format!("boot/vmlinuz-{release}"));
    let serial = run_guest(&kernel, &image)?;
    let lines: Vec<String> = serial
        .lines()
        .filter(|l| l.contains("ZTRACE-"))
        .map(|l| l.trim().to_string())
        .collect();
    if !lines
        .iter()
        .any(|l| l.ends_with("ZTRACE-KERNEL-SMOKE-EXIT: 0"))
    {
        bail!(
            "the smoke test did not pass in the guest; its console said:\n{}",
            tail(&serial, 60)
        );
    }
    Ok(lines)
}

/// `targets` and what they need, each after its dependencies (modules.dep lists a module's
/// dependencies, the deepest last).
fn load_order(modules_dep: &str, targets: &[&str]) -> Result<Vec<String>> {
    let deps: Vec<(&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.trim(), d.split_whitespace().collect()))
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    for t in targets {
        let file = format!("/{t}.ko");
        let (m, d) = deps
            .iter()
            .find(|(m, _)| m.ends_with(&file))
            .with_context(|| format!("module {t} is not in modules.dep"))?;
        for dep in d.iter().rev().chain(std::iter::once(m)) {
            if !order.iter().any(|o| o == dep) {
                order.push(dep.to_string());
            }
        }
    }
    Ok(order)
}

fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /modules/$m || echo "ZTRACE-GUEST: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576 hostroot /host || echo "ZTRACE-GUEST: 9p mount failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mount -t tracefs tracefs /host/sys/kernel/tracing
mount -t bpf bpf /host/sys/fs/bpf
mkdir /host/run/ztrace-smoke
cp /payload/* /host/run/ztrace-smoke/
echo "ZTRACE-KERNEL: $(uname -r)"
chroot /host /bin/bash /run/ztrace-smoke/smoke.sh
echo "ZTRACE-KERNEL-SMOKE-EXIT: $?"
poweroff -f
"#,
        modules = modules.join(" ")
    )
}

/// The HTTP smoke test, run as root inside the guest on the host's files; the binary and the
/// backend are in /run/ztrace-smoke (copied there from the initramfs).
const SMOKE_SCRIPT: &str = r#"set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
ip link set lo up
/usr/bin/python3 /run/ztrace-smoke/two_tier.py backend > /tmp/backend.out 2>&1 &
BACK=$!
for i in $(seq 100); do grep -q PORT /tmp/backend.out && break; sleep 0.1; done
PORT=$(sed -n 's/^PORT //p' /tmp/backend.out)
/run/ztrace-smoke/ztrace --pid $BACK --output json --duration 60s > /tmp/spans.json 2> /tmp/ztrace.err &
Z=$!
for i in $(seq 300); do grep -q "process(es)" /tmp/ztrace.err && break; sleep 0.1; done
# The seccomp allow-list is on this kernel too (every request below runs under it).
SECCOMP=$(sed -n 's/^Seccomp:[[:space:]]*//p' /proc/$Z/status)
echo "ZTRACE-SECCOMP: $SECCOMP"
for i in 1 2 3 4 5; do curl -s -o /dev/null http://127.0.0.1:$PORT/item/$i; done
sleep 2
# The traced process exits: ztrace must see it (the exit probe) and stop by itself.
kill $BACK
wait $Z
echo "ZTRACE-EXIT: $?"
grep -E "socket data from|stopping:|seccomp:" /tmp/ztrace.err | sed 's/^/ZTRACE-LOG: /'
N=$(grep -c '"kind":"SERVER"' /tmp/spans.json)
echo "ZTRACE-SERVER-SPANS: $N"
grep -q "every traced process has exited" /tmp/ztrace.err || { echo "ZTRACE-FAIL: no exit seen"; cat /tmp/ztrace.err; exit 1; }
[ "$N" -ge 5 ] || { echo "ZTRACE-FAIL: $N server spans, want 5"; cat /tmp/ztrace.err; exit 1; }
[ "$SECCOMP" = 2 ] || { echo "ZTRACE-FAIL: Seccomp: $SECCOMP, want 2"; cat /tmp/ztrace.err; exit 1; }
"#;

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Boots `kernel` with `initrd` and the host's root shared read-only; returns the serial console.
fn run_guest(kernel: &Path, initrd: &Path) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            bail!(
                "the guest did not finish in {} s; its console said:\n{}",
                GUEST_TIMEOUT.as_secs(),
                tail(&out, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(reader.join().unwrap_or_default())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n\
                   kernel/net/9p/9pnet.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n";
        let order = load_order(dep, &["virtio_pci", "9pnet_virtio", "9p"]).unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_pci.ko",
                "9pnet.ko",
                "9pnet_virtio.ko",
                "netfs.ko",
                "fscache.ko",
                "9p.ko"
            ]
        );
        assert!(load_order(dep, &["nosuch"]).is_err());
    }
}
