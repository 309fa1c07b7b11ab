#!/usr/bin/env python3
"""mkoci.py - a single-layer OCI image archive from local files; no Docker, no registry.

usage: mkoci.py OUT.tar IMAGE_REF [--entrypoint JSON] [--cmd JSON] [--user UID:GID] [--workdir DIR]
                ENTRY [ENTRY ...]
  ENTRY is SRC:DEST (a file, mode 0755), @DEST=TARGET (a symlink) or DIR/:DEST (a whole tree:
  DIR's contents under DEST, with their modes, symlinks and hard links; put it first).
  e.g. mkoci.py pause.tar registry.k8s.io/pause:3.10.2 --entrypoint '["/pause"]' ./pause:/pause
       mkoci.py redis.tar quorate.test/redis:7 --cmd '["redis-server"]' rootfs/:/
The archive is deterministic (fixed mtimes, owners root) and carries io.containerd.image.name,
so `ctr -n k8s.io images import OUT.tar` names the image IMAGE_REF.
"""
import argparse, gzip, hashlib, io, json, os, tarfile


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(entries):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()

        def parents(dest):
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(ti)

        def tree(src, dest):
            # Sorted, depth first: the same tree gives the same bytes. Owners and mtimes are
            # normalized; gettarinfo keeps the mode, symlink targets and hard links.
            for e in sorted(os.scandir(src), key=lambda e: e.name):
                name = f"{dest}/{e.name}" if dest else e.name
                ti = tar.gettarinfo(e.path, name)
                if ti.type not in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE):
                    raise SystemExit(f"mkoci.py: {e.path}: not a file, directory or symlink")
                ti.uid = ti.gid = ti.mtime = 0
                ti.uname = ti.gname = ""
                if ti.type == tarfile.DIRTYPE:
                    if name not in seen:
                        seen.add(name)
                        tar.addfile(ti)
                    tree(e.path, name)
                elif ti.type == tarfile.REGTYPE:
                    with open(e.path, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)

        for entry in entries:
            if not entry.startswith("@") and entry.split(":", 1)[0].endswith("/"):
                src, dest = entry.split(":", 1)
                dest = dest.strip("/")
                if dest:
                    parents(dest + "/")
                tree(src, dest)
            elif entry.startswith("@"):
                dest, target = entry[1:].split("=", 1)
                dest = dest.lstrip("/")
                parents(dest)
                ti = tarfile.TarInfo(dest)
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(ti)
            else:
                src, dest = entry.split(":", 1)
                dest = dest.lstrip("/")
                parents(dest)
                with open(src, "rb") as f:
                    data = f.read()
                ti = tarfile.TarInfo(dest)
                ti.size, ti.mode = len(data), 0o755
                tar.addfile(ti, io.BytesIO(data))
    return raw.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("ref")
    ap.add_argument("--entrypoint", default=None)
    ap.add_argument("--cmd", default=None)
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--path", default="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    ap.add_argument("entries", nargs="+")
    args = ap.parse_args()

    layer_tar = layer(args.entries)
    # Level 6 (gzip's default): a 40 MB layer packs in 2 s instead of 8 s at 9, 0.4 % larger.
    layer_gz = gzip.compress(layer_tar, compresslevel=6, mtime=0)
    config = {
        "created": "1970-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=" + args.path], "WorkingDir": args.workdir},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer_tar)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/mkoci.py"}],
    }
    if args.entrypoint:
        config["config"]["Entrypoint"] = json.loads(args.entrypoint)
    if args.cmd:
        config["config"]["Cmd"] = json.loads(args.cmd)
    if args.user:
        config["config"]["User"] = args.user
    cfg = json.dumps(config, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer_gz), "size": len(layer_gz)}],
    }, separators=(",", ":")).encode()
    tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": args.ref, "org.opencontainers.image.ref.name": tag}}]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), "index.json": json.dumps(index).encode()}
    for blob in (layer_gz, cfg, manifest):
        files["blobs/sha256/" + digest(blob)[7:]] = blob
    with tarfile.open(args.out, "w") as t:
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
    print(f"{args.out}: {args.ref} {digest(manifest)}")


if __name__ == "__main__":
    main()
