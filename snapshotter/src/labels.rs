//! The labels through which containerd (and the tools written for stargz-snapshotter)
//! ask for a layer to be made available remotely, and the one Skiff puts on the
//! snapshots it serves lazily.

use std::collections::BTreeMap;

/// The chain id the unpacker wants the layer committed under.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// Marks a snapshot served lazily (the label stargz-snapshotter uses, so tools that
/// look for it work).
pub const REMOTE: &str = "containerd.io/snapshot/remote";
/// [`REMOTE`]'s value.
pub const REMOTE_VALUE: &str = "remote snapshot";

/// containerd's CRI plugin (with `disable_snapshot_annotations = false`).
const CRI_IMAGE: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const CRI_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
/// stargz-snapshotter's tools (`ctr-remote images rpull`, nerdctl).
const STARGZ_IMAGE: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
const URLS: &str = "containerd.io/snapshot/remote/urls";
/// The layer's eStargz TOC digest: a layer annotation, which containerd passes on to
/// the snapshotter (as every `containerd.io/snapshot/` one).
const ESTARGZ_TOC: &str = "containerd.io/snapshot/stargz/toc.digest";

/// A request to make one layer of an image available lazily.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LazyRequest {
    /// The name to commit the layer under (its chain id).
    pub target: String,
    /// The image reference.
    pub image: String,
    /// The layer's digest.
    pub digest: String,
    /// The digests of this layer and the image's layers above it, bottom first,
    /// when the labels list them (containerd and stargz's tools list `layers[i..]`
    /// for layer `i`, cut short at their label size limit).
    pub layers: Vec<String>,
    /// Alternative URLs of the layer blob (foreign layers), if given.
    pub urls: Vec<String>,
    /// Whether the labels carry the layer's eStargz TOC digest: the image is
    /// eStargz, and its layers' TOCs sit at their ends.
    pub estargz: bool,
}

/// The lazy request in `labels`, if they name a target, an image and a layer (CRI's
/// labels first, then stargz's).
pub fn lazy_request(labels: &BTreeMap<String, String>) -> Option<LazyRequest> {
    let target = labels.get(TARGET)?.clone();
    let get = |a: &str, b: &str| labels.get(a).or_else(|| labels.get(b)).cloned();
    let image = get(CRI_IMAGE, STARGZ_IMAGE)?;
    let digest = get(CRI_DIGEST, STARGZ_DIGEST)?;
    let split = |v: Option<String>| {
        v.map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    };
    Some(LazyRequest {
        target,
        image,
        digest,
        layers: split(get(CRI_LAYERS, STARGZ_LAYERS)),
        urls: split(labels.get(URLS).cloned()),
        estargz: labels.contains_key(ESTARGZ_TOC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_and_stargz_labels_name_the_same_request() {
        let cri = labels(&[
            (TARGET, "sha256:chain"),
            (CRI_IMAGE, "reg/a:1"),
            (CRI_DIGEST, "sha256:l2"),
            (CRI_LAYERS, "sha256:l1,sha256:l2"),
        ]);
        let stargz = labels(&[
            (TARGET, "sha256:chain"),
            (STARGZ_IMAGE, "reg/a:1"),
            (STARGZ_DIGEST, "sha256:l2"),
            (STARGZ_LAYERS, "sha256:l1,sha256:l2"),
        ]);
        let want = LazyRequest {
            target: "sha256:chain".into(),
            image: "reg/a:1".into(),
            digest: "sha256:l2".into(),
            layers: vec!["sha256:l1".into(), "sha256:l2".into()],
            urls: vec![],
            estargz: false,
        };
        assert_eq!(lazy_request(&cri), Some(want.clone()));
        assert_eq!(lazy_request(&stargz), Some(want.clone()));
        // The layer's TOC annotation, passed on as a label, says it is eStargz.
        let mut with_toc = cri.clone();
        with_toc.insert(ESTARGZ_TOC.into(), "sha256:toc".into());
        let want = LazyRequest {
            estargz: true,
            ..want
        };
        assert_eq!(lazy_request(&with_toc), Some(want));
    }

    #[test]
    fn a_plain_prepare_is_not_lazy() {
        assert_eq!(lazy_request(&labels(&[(TARGET, "sha256:c")])), None);
        assert_eq!(
            lazy_request(&labels(&[(CRI_IMAGE, "r/a"), (CRI_DIGEST, "sha256:d")])),
            None
        );
    }
}
