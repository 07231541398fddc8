#!/usr/bin/env python3
"""The second hostile-input corpus (issue 36), run against an `adeis` binary, each outcome
classified: ok, panic (a panic or a signal), hang (past the time limit), silent (a run that
should have failed, or changed a file it must not), left (files left behind by a failed run),
unclear (an error without the words that say what is wrong). Prints one line per case and the
counts, so that two binaries (before and after a change) can be compared:

    scripts/hostile-corpus.py target/release/adeis            # CI adds --strict
    scripts/hostile-corpus.py /tmp/old/adeis --timeout 60

Run from the repository root (the cases use its fixtures). Standard library only. CI runs it
with --strict after the tests; tests/hostile_ii.rs asserts the same families' messages in
detail.
"""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

SPEC = "examples/specs/sample_dpmpp.toml"
DDIM = "examples/specs/diffusers_ddim.toml"
UNET = "tests/fixtures/unet/class_cond_cifar_style"
GAUSS = "gaussian:mu=0,s2=1"
FAST_LS = ["--iters", "5", "--train", "8", "--heldout", "8"]
FAST_FT = ["--iters", "3", "--batch", "2", "--steps", "2", "--eval-per-class", "1", "--eval-every", "1"]


def npy(path, shape, values):
    """A little-endian f8 .npy file."""
    import struct
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack("<%dd" % len(values), *values))


def copy_unet(root, name, edit=None, text=None):
    d = os.path.join(root, name)
    shutil.copytree(UNET, d)
    cfg = os.path.join(d, "config.json")
    if text is not None:
        with open(cfg, "w") as f:
            f.write(text)
    elif edit is not None:
        with open(cfg) as f:
            c = json.load(f)
        edit(c)
        with open(cfg, "w") as f:
            json.dump(c, f)
    return d


def nan_weights(root, name, tensor):
    """A copy of the fixture UNet with one value of `tensor` set to NaN (the F32 safetensors
    layout read and rewritten by hand)."""
    import struct
    d = copy_unet(root, name)
    path = os.path.join(d, "diffusion_pytorch_model.safetensors")
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    start = 8 + n + header[tensor]["data_offsets"][0]
    dtype = header[tensor]["dtype"]
    if dtype == "F32":
        blob[start + 4:start + 8] = struct.pack("<f", float("nan"))
    else:  # F16 / BF16: an all-ones exponent and a mantissa bit
        blob[start + 2:start + 4] = b"\x01\x7f" if dtype == "F16" else b"\xc1\x7f"
    with open(path, "wb") as f:
        f.write(blob)
    return d


def nan_reference(root, name):
    """A copy of the fixture UNet's reference.safetensors with one value of diffusers' forward
    pass (`out.f32`) set to NaN."""
    import struct
    src = os.path.join(UNET, "reference.safetensors")
    with open(src, "rb") as f:
        blob = bytearray(f.read())
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    start = 8 + n + header["out.f32"]["data_offsets"][0]
    width = {"F64": 8, "F32": 4}[header["out.f32"]["dtype"]]
    blob[start:start + width] = struct.pack("<d" if width == 8 else "<f", float("nan"))
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(blob)
    return path


def digest(path):
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    if not os.path.exists(path):
        return None
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return ("special", stat.S_IFMT(st.st_mode))
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cases(root):
    """(name, family, args, expect, words, absent, unchanged, options)"""
    j = lambda *p: os.path.join(root, *p)
    x = j("x.npy")
    npy(x, [2, 2], [0.1, -0.2, 0.3, 0.4])
    g = j("g")
    os.makedirs(g)
    gx = j("g", "dx_t.npy")
    npy(gx, [2, 2], [0.1, -0.2, 0.3, 0.4])
    big = j("big.npy")
    npy(big, [1, 3, 512, 512], [0.0] * (3 * 512 * 512))
    img = j("img.npy")
    npy(img, [1, 3, 8, 8], [0.5] * 192)
    fifo = j("fifo")
    os.mkfifo(fifo)
    cdev = j("cdev")
    try:
        os.mknod(cdev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        cdev = None
    gf = j("gf")
    os.makedirs(gf)
    os.mkfifo(j("gf", "dx_t.npy"))
    file_not_dir = j("plain")
    with open(file_not_dir, "w") as f:
        f.write("x")
    huge = j("huge.json")
    with open(huge, "w") as f:
        json.dump({"weights": [0.5, 0.5], "means": [[1e300, 0], [0, 1e300]], "variances": [1e300, 1e300]}, f)
    nan_sched = j("nan_sched.toml")
    with open(nan_sched, "w") as f:
        f.write('[schedule]\nkind = "custom"\nlog_alpha = "-t^2 - 0.1*t"\n'
                'sigma = "sqrt(1 - exp(2 * log_alpha(t))) * (1 + 0 * sqrt(abs(t - 0.5) - 1e-6))"\n'
                't_range = [0.001, 1.0]\n[sampler]\nmethod = "ddim"\ntimes = [1.0, 0.5, 0.001]\n')
    zero_at = j("zero_at.toml")
    with open(zero_at, "w") as f:
        f.write('[schedule]\nkind = "custom"\nlog_alpha = "-t^2"\n'
                'sigma = "sqrt(1 - exp(2 * log_alpha(t))) * min(1, abs(t - 0.4) * 1e7)"\n'
                't_range = [0.01, 1.0]\n')

    def sched(name, text):
        p = j(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    inf_model = copy_unet(root, "inf")
    with open(os.path.join(inf_model, "scheduler_config.json")) as f:
        t = f.read()
    with open(os.path.join(inf_model, "scheduler_config.json"), "w") as f:
        f.write(t.replace("{", '{\n  "lambda_min_clipped": -Infinity,', 1))
    fm = j("fm")
    shutil.copytree("models/fashion-mnist", fm)
    fm_weights = os.path.join(fm, "unet", "diffusion_pytorch_model.safetensors")
    ft_folder = j("ftw")
    os.makedirs(os.path.join(ft_folder, "report.md"))

    out = j("out")
    c = []
    add = lambda *a, **k: c.append((a, k))
    # Crashes: divergence and collapse of learn-steps, extreme mixtures, memory.
    for lr, iters in [("1e300", "5"), ("1e6", "20"), ("100", "50"), ("30", "200"), ("5", "200")]:
        add("learn-steps --lr " + lr, "crash", ["learn-steps", "--lr", lr, "--iters", iters, "--train", "8", "--heldout", "8", "--out", j("ls" + lr)],
            "error", ["--lr"], [j("ls" + lr)])
    add("learn-steps --lr 1e300 --dtype f64", "crash", ["learn-steps", "--lr", "1e300", "--dtype", "f64"] + FAST_LS + ["--out", j("lsf")], "error", ["--lr"], [j("lsf")])
    add("learn-steps gmm 1e300", "crash", ["learn-steps", "--model", "gmm:" + huge] + FAST_LS + ["--out", j("lsh")], "error", ["1e300"], [j("lsh")])
    add("sample gmm 1e300", "crash", ["sample", "--spec", SPEC, "--model", "gmm:" + huge, "--x-t", x, "--out", j("o1.npy")], "error", ["1e300"], [j("o1.npy")])
    add("sample 512x512 on an 8x8 UNet", "crash", ["sample", "--spec", DDIM, "--model", "diffusers:" + UNET, "--x-t", big, "--class-labels", "1", "--out", j("o2.npy")], "error", ["GiB", "sample_size"], [j("o2.npy")])
    add("grad 512x512 on an 8x8 UNet", "crash", ["grad", "--spec", DDIM, "--model", "diffusers:" + UNET, "--x-t", big, "--cot", big, "--class-labels", "1", "--out-dir", j("g2")], "error", ["GiB"], [j("g2")])
    add("check: sigma NaN at a grid time", "crash", ["check", nan_sched], "error", ["sampler.times", "NaN"], [])
    add("sample: sigma NaN at a grid time", "crash", ["sample", "--spec", nan_sched, "--model", GAUSS, "--x-t", x, "--out", j("o3.npy")], "error", ["sampler.times"], [j("o3.npy")])
    add("schedule --at where sigma is 0", "silent", ["schedule", zero_at, "--at", "0.4"], "error", ["not valid at t = 0.4"], [])
    # Hangs and sizes.
    add("learn-steps gaussian mu=1e30 s2=1e-30", "hang", ["learn-steps", "--model", "gaussian:mu=1e30,s2=1e-30"] + FAST_LS + ["--out", j("lsg")], "error", ["loss"], [j("lsg")])
    for flag, v in [("--train", "100000000"), ("--heldout", "100000000"), ("--iters", "100001")]:
        add("learn-steps %s %s" % (flag, v), "hang", ["learn-steps", flag, v, "--out", j("lss")], "error", ["at most"], [j("lss")])
    # Silent wrong results: outputs over inputs, devices and FIFOs, checks that say too little.
    add("sample --out ./x.npy (the input)", "silent", ["sample", "--spec", SPEC, "--model", GAUSS, "--x-t", x, "--out", os.path.join(root, ".", "x.npy")], "error", ["input"], [], {"unchanged": [x]})
    add("grad --x-t g/dx_t.npy --out-dir g", "silent", ["grad", "--spec", SPEC, "--model", GAUSS, "--x-t", gx, "--cot", gx, "--out-dir", g], "error", ["overwrite the input"], [], {"unchanged": [gx]})
    add("invert --out = --x-0", "silent", ["invert", "--spec", SPEC, "--model", GAUSS, "--x-0", x, "--out", os.path.join(root, ".", "x.npy")], "error", ["input"], [], {"unchanged": [x]})
    add("finetune --models M --out M", "silent", ["finetune", "--models", fm, "--out", fm] + FAST_FT, "error", ["--models"], [], {"unchanged": [fm_weights]})
    add("sample --out FIFO", "silent", ["sample", "--spec", SPEC, "--model", GAUSS, "--x-t", x, "--out", fifo], "error", ["not a regular file"], [], {"unchanged": [fifo]})
    add("invert --out FIFO", "silent", ["invert", "--spec", SPEC, "--model", GAUSS, "--x-0", x, "--out", fifo], "error", ["not a regular file"], [], {"unchanged": [fifo]})
    add("grad --out-dir with a FIFO at dx_t.npy", "silent", ["grad", "--spec", SPEC, "--model", GAUSS, "--x-t", x, "--cot", x, "--out-dir", gf], "error", ["not a regular file"], [], {"unchanged": [os.path.join(gf, "dx_t.npy")]})
    if cdev:
        add("sample --out a character device", "silent", ["sample", "--spec", SPEC, "--model", GAUSS, "--x-t", x, "--out", cdev], "error", ["not a regular file"], [], {"unchanged": [cdev]})
    ref = os.path.join(UNET, "reference.safetensors")
    add("check --reference with NaN in diffusers' numbers", "silent", ["check", "--model", "diffusers:" + UNET, "--reference", nan_reference(root, "nan_ref.safetensors")], "error", ["out.f32", "NaN", "finite"], [])
    add("check --reference --device tpu", "unclear", ["check", "--model", "diffusers:" + UNET, "--reference", ref, "--device", "tpu"], "error", ["device", "tpu", "cpu or cuda"], [])
    add("check --reference of another model", "silent", ["check", "--model", "diffusers:tests/fixtures/unet/attn_down_up", "--reference", ref], "error", [], [])
    add("check --model gaussian:mu=1", "silent", ["check", "--model", "gaussian:mu=1"], "ok", ["s2 = 1"], [])
    add("check --model digits", "silent", ["check", "--model", "digits"], "ok", ["64"], [])
    add("check --model gmm", "silent", ["check", "--model", "gmm:examples/models/ring8.json"], "ok", ["mixture of 8"], [])
    add("check: NaN in conv_out.bias", "silent", ["check", "--model", "diffusers:" + nan_weights(root, "nan1", "conv_out.bias")], "error", ["conv_out.bias"], [])
    add("check: NaN in time_embedding", "silent", ["check", "--model", "diffusers:" + nan_weights(root, "nan2", "time_embedding.linear_1.weight")], "error", ["time_embedding.linear_1.weight"], [])
    add("sample: NaN weights", "silent", ["sample", "--spec", DDIM, "--model", "diffusers:" + j("nan1"), "--x-t", img, "--class-labels", "1", "--out", j("o4.npy")], "error", ["conv_out.bias"], [j("o4.npy")])
    add("config sample_size -1", "silent", ["check", "--model", "diffusers:" + copy_unet(root, "ss", lambda c: c.update(sample_size=-1))], "error", ["sample_size"], [])
    add("config sample_size [0, 8]", "silent", ["check", "--model", "diffusers:" + copy_unet(root, "ss2", lambda c: c.update(sample_size=[0, 8]))], "error", ["sample_size"], [])
    add("learn-steps digits --dtype f64", "silent", ["learn-steps", "--model", "digits", "--dtype", "f64"] + FAST_LS + ["--out", j("lsd")], "error", ["--dtype"], [j("lsd")])
    nulls = sched("nulls.json", json.dumps({"_class_name": "DDIMScheduler", "num_train_timesteps": None, "beta_start": None, "beta_end": None, "beta_schedule": None, "prediction_type": None}))
    add("scheduler config all null", "silent", ["check", nulls, "--steps", "10"], "error", ["null"], [])
    # Left behind.
    add("finetune --lr 1e6", "left", ["finetune", "--out", j("ft1"), "--lr", "1e6"] + FAST_FT, "error", ["--lr"], [j("ft1")])
    add("finetune with report.md a folder", "left", ["finetune", "--out", ft_folder] + FAST_FT, "error", ["report.md"], [os.path.join(ft_folder, "before.png"), os.path.join(ft_folder, "unet")])
    add("finetune Ctrl-C", "left", ["finetune", "--out", j("ft2"), "--iters", "100000", "--batch", "2", "--steps", "2"], "error", [], [j("ft2")], {"interrupt": 2.0})
    add("finetune --lr nan", "left", ["finetune", "--out", j("ft3"), "--lr", "nan"] + FAST_FT, "error", ["lr"], [j("ft3")])
    # Unclear errors.
    add("model folder scheduler -Infinity", "unclear", ["check", "--model", "diffusers:" + inf_model], "ok", ["valid"], [])
    add("config.json []", "unclear", ["check", "--model", "diffusers:" + copy_unet(root, "arr", text="[]")], "error", ["array"], [])
    add("config.json null", "unclear", ["check", "--model", "diffusers:" + copy_unet(root, "null", text="null")], "error", ["not an object"], [])
    add("config.json nested 100000 deep", "unclear", ["check", "--model", "diffusers:" + copy_unet(root, "deep", text="[" * 100000 + "]" * 100000)], "error", ["deep"], [])
    add("config.json without block_out_channels", "unclear", ["check", "--model", "diffusers:" + copy_unet(root, "miss", lambda c: c.pop("block_out_channels"))], "error", ["block_out_channels", "default"], [])
    add("config.json without _class_name", "unclear", ["check", "--model", "diffusers:" + copy_unet(root, "unnamed", lambda c: c.pop("_class_name"))], "error", ["_class_name"], [])
    add("scheduler config without _class_name", "unclear", ["check", sched("nocls.json", '{"_diffusers_version": "0.30.0", "num_train_timesteps": 1000}'), "--steps", "10"], "error", ["without `_class_name`"], [])
    add("scheduler config truncated", "unclear", ["check", sched("cut.json", '{"_class_name": "DDIMScheduler", "num_train_t'), "--steps", "10"], "error", ["truncated"], [])
    add("scheduler config truncated, newline", "unclear", ["check", sched("cut2.json", '{"_class_name": "DDIMScheduler",\n  "beta_start": 0.0001,\n'), "--steps", "10"], "error", ["truncated"], [])
    add("scheduler config nested 100000 deep", "unclear", ["check", sched("deep.json", '{"a":' * 100000 + "1" + "}" * 100000), "--steps", "10"], "error", ["deep"], [])
    add("spec: a 5 MB kind", "unclear", ["check", sched("long.toml", '[schedule]\nkind = "%s"\n' % ("x" * 5000000))], "error", ["characters"], [], {"max_stderr": 2000})
    add("scheduler config: a 5 MB value", "unclear", ["check", sched("long.json", json.dumps({"_class_name": "DDIMScheduler", "beta_schedule": "z" * 5000000})), "--steps", "10"], "error", ["characters"], [], {"max_stderr": 2000})
    add("grad --out-dir that is a file", "unclear", ["grad", "--spec", SPEC, "--model", GAUSS, "--x-t", x, "--cot", x, "--out-dir", file_not_dir], "error", ["is a file"], [], {"unchanged": [file_not_dir]})
    add("learn-steps --out that is a file", "unclear", ["learn-steps"] + FAST_LS + ["--out", file_not_dir], "error", ["is a file"], [], {"unchanged": [file_not_dir]})
    add("train --out that is a file", "unclear", ["train", "--dataset", "digits", "--out", file_not_dir, "--denoiser-steps", "1", "--classifier-steps", "1"], "error", ["is a file"], [], {"unchanged": [file_not_dir]})
    add("morph --out under a file", "unclear", ["morph", "--pairs", "2", "--iters", "1", "--out", os.path.join(file_not_dir, "sub")], "error", ["is a file"], [], {"unchanged": [file_not_dir]})
    add("learn-steps from another folder", "unclear", ["learn-steps"] + FAST_LS + ["--out", j("lso")], "ok", [], [], {"cwd": root})
    add("check a diffusers config --steps 20", "unclear", ["check", "tests/fixtures/schedulers/dpmpp_2m/scheduler_config.json", "--steps", "20"], "ok", ["20 steps as diffusers counts them"], [])
    return c


def run(binary, case, timeout):
    (name, family, args, expect, words, absent, *rest), opts = case[0], case[1]
    extra = rest[0] if rest else {}
    extra.update(opts)
    cwd = extra.get("cwd", os.getcwd())
    before = {p: digest(p) for p in extra.get("unchanged", [])}
    proc = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    try:
        if "interrupt" in extra:
            try:
                proc.wait(extra["interrupt"])
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return name, family, "hang"
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    if proc.returncode < 0 or "panicked" in err or "memory allocation" in err:
        return name, family, "panic"
    changed = [p for p, d in before.items() if digest(p) != d]
    left = [p for p in absent if os.path.exists(p)]
    ok = proc.returncode == 0
    if changed or (expect == "error" and ok and "interrupt" not in extra):
        return name, family, "silent"
    if left:
        return name, family, "left"
    said = out + err
    if expect == "ok" and not ok:
        return name, family, "unclear"
    if any(w not in said for w in words) or len(err) > extra.get("max_stderr", 10**9):
        return name, family, "unclear"
    return name, family, "ok"


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every case is ok (CI)")
    a = ap.parse_args()
    binary = os.path.abspath(a.binary)
    counts = {}
    with tempfile.TemporaryDirectory(prefix="adeis-corpus-") as root:
        for case in cases(root):
            name, family, outcome = run(binary, case, a.timeout)
            counts[outcome] = counts.get(outcome, 0) + 1
            print("%-8s %-8s %s" % (outcome, family, name), flush=True)
    total = sum(counts.values())
    print("\n%d cases: %s" % (total, ", ".join("%s %d" % (k, counts.get(k, 0)) for k in ["ok", "panic", "hang", "silent", "left", "unclear"])))
    if a.strict and counts.get("ok", 0) != total:
        sys.exit(1)


if __name__ == "__main__":
    main()
