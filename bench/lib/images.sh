# shellcheck shell=bash
# Image building for bench/coldstart.sh (sourced, not run).
#
# Builds, once, an OCI layout under $CACHE/oci with one tag per image:
#   base    debootstrap --variant=minbase bookworm (one layer)
#   python  base + python3                       (two layers)
#   gcc     base + gcc libc6-dev                 (two layers)
#   node    base + nodejs                        (two layers)
# The second layer is the diff umoci makes on repack (whiteouts included) after a
# chroot `apt-get install` into an unpacked copy of base. Stamps under $CACHE make
# reruns skip finished steps; delete $CACHE to rebuild from scratch.
#
# Then pushes each image to the local registry (direct, unshaped) in three forms:
#   :gzip   plain tar+gzip, plus a published checkpoint index (`skiff index --push`)
#   :esgz   eStargz (`skiff convert`)
#   :zstd   zstd:chunked (`skopeo copy --dest-compress-format zstd:chunked`)
# Needs: MIRROR, CACHE, SKIFF, REG (host:port of the unshaped registry), log().

PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Packages of each image's second layer, and its default command.
image_packages() {
    case $1 in
    python) echo python3 ;;
    gcc) echo gcc libc6-dev ;;
    node) echo nodejs ;;
    *) return 1 ;;
    esac
}

# Mounts made for chroot installs, so the cleanup trap can undo them.
chroot_mounts() { mount | awk -v d="$CACHE/build/" 'index($3,d)==1{print $3}' | sort -r; }
undo_chroot_mounts() { chroot_mounts | xargs -r -n1 umount -l 2>/dev/null || true; }

build_base() {
    [ -f "$CACHE/stamps/base" ] && return 0
    log "building base layer: debootstrap --variant=minbase bookworm ($MIRROR)"
    local b=$CACHE/build
    mkdir -p "$b" "$CACHE/stamps"
    if [ ! -f "$b/base.done" ]; then
        rm -rf "$b/base.tmp"
        debootstrap --variant=minbase bookworm "$b/base.tmp" "$MIRROR" >"$b/debootstrap.log" 2>&1 ||
            { tail -20 "$b/debootstrap.log" >&2; return 1; }
        touch "$b/base.done"
    fi
    # An image's /dev is empty (the runtime makes it); apt lists and caches are
    # dropped, as official images do.
    find "$b/base.tmp/dev" -mindepth 1 -delete
    # (debootstrap also leaves every .deb it installed in the apt cache: 50 MB)
    rm -rf "$b/base.tmp/var/lib/apt/lists/"* "$b/base.tmp/var/cache/apt/"*.bin \
        "$b/base.tmp/var/cache/apt/archives/"*.deb
    rm -rf "$CACHE/oci" "$b/u-base"
    umoci init --layout "$CACHE/oci"
    umoci new --image "$CACHE/oci:empty"
    umoci unpack --image "$CACHE/oci:empty" "$b/u-base" >/dev/null
    rmdir "$b/u-base/rootfs"
    mv "$b/base.tmp" "$b/u-base/rootfs"
    umoci repack --image "$CACHE/oci:base" "$b/u-base"
    umoci config --image "$CACHE/oci:base" --config.env "$PATH_ENV" --config.cmd bash
    rm -rf "$b/u-base" "$b/base.done"
    touch "$CACHE/stamps/base"
}

build_variant() {
    local name=$1 pkgs
    pkgs=$(image_packages "$name")
    [ -f "$CACHE/stamps/$name" ] && return 0
    log "building $name layer: apt-get install $pkgs"
    local u=$CACHE/build/u-$name
    rm -rf "$u"
    umoci unpack --image "$CACHE/oci:base" "$u" >/dev/null
    local r=$u/rootfs
    mount --bind /dev "$r/dev"
    mount -t proc proc "$r/proc"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    # shellcheck disable=SC2086
    chroot "$r" /bin/sh -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends $pkgs >/dev/null && apt-get clean" \
        >"$CACHE/build/$name.log" 2>&1 || { undo_chroot_mounts; tail -20 "$CACHE/build/$name.log" >&2; return 1; }
    umount "$r/proc" "$r/dev"
    rm -rf "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin "$r/var/log/apt/"* "$r/var/log/dpkg.log"
    umoci repack --image "$CACHE/oci:$name" "$u"
    umoci config --image "$CACHE/oci:$name" --config.env "$PATH_ENV" --config.cmd bash
    rm -rf "$u"
    touch "$CACHE/stamps/$name"
}

# True when the registry already holds REF (host:port/repo:tag).
registry_has() { skopeo inspect --raw --tls-verify=false "docker://$1" >/dev/null 2>&1; }

push_variant() {
    local name=$1 repo=$REG/bench/$1
    if ! registry_has "$repo:gzip"; then
        log "pushing $name:gzip"
        skopeo copy -q --dest-tls-verify=false "oci:$CACHE/oci:$name" "docker://$repo:gzip"
    fi
    if ! registry_has "$repo:zstd"; then
        log "pushing $name:zstd (zstd:chunked)"
        # Via a second OCI layout: straight to the registry, skopeo 1.9 reuses the
        # gzip blobs already there and pushes gzip layers under the zstd tag.
        rm -rf "$CACHE/oci-zstd-$name"
        skopeo copy -q --dest-compress --dest-compress-format zstd:chunked \
            "oci:$CACHE/oci:$name" "oci:$CACHE/oci-zstd-$name:$name"
        skopeo copy -q --dest-tls-verify=false "oci:$CACHE/oci-zstd-$name:$name" "docker://$repo:zstd"
        rm -rf "$CACHE/oci-zstd-$name"
    fi
    if ! registry_has "$repo:esgz"; then
        log "pushing $name:esgz (skiff convert)"
        "$SKIFF" convert -q "$repo:gzip" "$repo:esgz"
    fi
    if [ ! -f "$CACHE/stamps/index-$name" ]; then
        log "publishing the checkpoint index of $name:gzip (skiff index --push)"
        "$SKIFF" --root "$WORK/skiff-index-root" index -q --push "$repo:gzip"
        touch "$CACHE/stamps/index-$name"
    fi
}

# Compressed size of an image's layers (bytes), from its manifest.
image_size() {
    skopeo inspect --raw --tls-verify=false "docker://$1" | jq '[.layers[].size] | add'
}
