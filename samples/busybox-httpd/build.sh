#!/usr/bin/env bash
# Builds a Linux container image of busybox httpd from Debian's busybox-static, without
# Docker: a root filesystem, one layer, an image config, saved as `docker save` does.
#
#   samples/busybox-httpd/build.sh [OUT]   # OUT defaults to samples/target/busybox-httpd
#
# Writes OUT/rootfs/ (the tree) and OUT/busybox-httpd.tar (image busybox-httpd:latest,
# serving ./www on port 80); then `skiff load -i OUT/busybox-httpd.tar`. The tarball is
# reproducible: sorted entries, owner root, mtime 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../target/busybox-httpd}

# Debian's busybox-static: one static binary, so the image needs no libc.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "busybox-static is needed: apt-get install busybox-static" >&2; exit 1; }
  apt-get install -y busybox-static >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y busybox-static >/dev/null; }
fi
busybox=/bin/busybox

rm -rf "$out"
mkdir -p "$out/rootfs/bin" "$out/rootfs/www" "$out/rootfs/tmp" "$out/img/layer"
cp "$busybox" "$out/rootfs/bin/busybox"
for applet in sh httpd ls cat echo env hostname sleep; do
  ln -s busybox "$out/rootfs/bin/$applet"
done
cp -r "$here/www/." "$out/rootfs/www/"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -cf "$out/img/layer/layer.tar" -C "$out/rootfs" .
diff_id=$(sha256sum "$out/img/layer/layer.tar" | cut -d' ' -f1)
cat >"$out/img/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/bin"],"Cmd":["httpd","-f","-p","80","-h","/www"],"WorkingDir":"/www",
           "ExposedPorts":{"80/tcp":{}}},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
echo '[{"Config":"config.json","RepoTags":["busybox-httpd:latest"],"Layers":["layer/layer.tar"]}]' \
  >"$out/img/manifest.json"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -cf "$out/busybox-httpd.tar" -C "$out/img" manifest.json config.json layer/layer.tar
rm -rf "$out/img"
echo "$out/busybox-httpd.tar"
