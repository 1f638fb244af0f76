"""Boots the test image in QEMU and measures the supervisor through the test agent:
PID 1 memory, time to all services ready, restart latency of a crashed service.
Run after `cargo xtask image --image llamabox-test`:  python3 xtask/bench/measure_supervisor.py
"""
import socket, subprocess, time, json, os, shutil, sys
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
img = os.path.join(root, "target/llamabox/out/qemu-x86_64/llamabox-test-qemu-x86_64-0.1.0.img")
d = os.path.join(root, "target/llamabox/bench/supervisor"); shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
subprocess.run(["cp", "--sparse=always", img, d + "/disk.img"], check=True)
shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", d + "/vars.fd")
start = time.time()
q = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35", "-m", "1024", "-smp", "1",
  "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
  "-drive", f"if=pflash,format=raw,unit=1,file={d}/vars.fd", "-drive", f"if=virtio,format=raw,file={d}/disk.img",
  "-device", "i6300esb", "-display", "none", "-monitor", "none", "-serial", f"file:{d}/console.log",
  "-serial", f"unix:{d}/agent.sock,server=on,wait=off", "-nic", "user,model=virtio-net-pci"])
def console():
    try: return open(d + "/console.log", errors="replace").read()
    except FileNotFoundError: return ""
def wait(n, t=300):
    while n not in console():
        if time.time() - start > t: sys.exit("timeout " + n)
        time.sleep(0.1)
    return time.time() - start
t_stage2 = wait("stage 2 reached")
t_ready = wait("slot a blessed")
s = socket.socket(socket.AF_UNIX); s.connect(d + "/agent.sock"); s.settimeout(30)
buf = b""
def cmd(c):
    global buf
    s.sendall((c + "\n").encode()); out = []
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1); line = line.decode(errors="replace").rstrip("\r")
            if line.startswith("END"): return out
            out.append(line)
        buf += s.recv(4096)
rss = [l for l in cmd("cat /proc/1/status") if l.startswith(("VmRSS", "VmHWM"))]
state = json.loads([l for l in cmd("state") if l.startswith("{")][-1])
boot = dict(l.split("=", 1) for l in cmd("cat /run/llamabox/boot") if "=" in l)
ready = {x["name"]: x["ready-at-ms"] for x in state["services"]}
restarts = []
for i in range(5):
    before = json.loads([l for l in cmd("state") if l.startswith("{")][-1])
    starts = [x for x in before["services"] if x["name"] == "test-idle"][0]["starts"]
    t0 = time.time(); cmd("kill test-idle SIGKILL")
    while True:
        st = json.loads([l for l in cmd("state") if l.startswith("{")][-1])
        x = [x for x in st["services"] if x["name"] == "test-idle"][0]
        if x["starts"] == starts + 1 and x["ready"]: break
        time.sleep(0.05)
    restarts.append(time.time() - t0)
    time.sleep(1.5)
log = cmd("exec /usr/bin/llamabox logs supervisor -n 400")
print("stage2 at %.1fs, blessed at %.1fs" % (t_stage2, t_ready))
print("rss", rss); print("stage1-ms", boot.get("stage1-ms")); print("ready-at-ms", ready)
print("restart round trips (host observed, incl. agent polling)", ["%.2f" % r for r in restarts])
print("\n".join(l for l in log if "test-idle" in l)[-3000:])
print("watchdog:", "petting the hardware watchdog" in console())
q.kill()
