use oci_spec::image::{DescriptorBuilder, MediaType};
use skiff_proto::index::open_index_with;
use skiff_proto::index::IndexOptions;
use skiff_proto::{Digest, FileBlob};
use std::collections::HashMap;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let digest: Digest = a[1].parse().unwrap();
    let toc: String = a[2].clone();
    let path = format!(
        "/var/tmp/skiff-bench/registry/docker/registry/v2/blobs/sha256/{}/{}/data",
        &a[1][7..9],
        &a[1][7..]
    );
    let size = std::fs::metadata(&path).unwrap().len();
    let mut ann = HashMap::new();
    ann.insert("containerd.io/snapshot/stargz/toc.digest".to_string(), toc);
    let d = DescriptorBuilder::default()
        .media_type(MediaType::ImageLayerGzip)
        .digest(a[1].parse::<oci_spec::image::Digest>().unwrap())
        .size(size)
        .annotations(ann)
        .build()
        .unwrap();
    //phases(&path);
    for _ in 0..60 {
        let blob = FileBlob::open(digest, &path).unwrap();
        let t = Instant::now();
        let i = open_index_with(&d, &blob, &IndexOptions::default()).unwrap();
        println!(
            "{} entries {} ms",
            i.entries.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
#[allow(dead_code)]
pub fn phases(path: &str) {
    use std::io::Read;
    let data = std::fs::read(path).unwrap();
    let size = data.len();
    let foot = &data[size - 51..];
    let i = foot.windows(6).position(|w| w == b"STARGZ").unwrap();
    let off = usize::from_str_radix(std::str::from_utf8(&foot[i - 16..i]).unwrap(), 16).unwrap();
    let comp = &data[off..size - 51];
    for _ in 0..3 {
        let t = Instant::now();
        let mut gz = flate2::read::GzDecoder::new(comp);
        let mut raw = Vec::new();
        gz.read_to_end(&mut raw).unwrap();
        let t1 = t.elapsed();
        let json = &raw[512..];
        let end = json.iter().position(|&b| b == 0).unwrap_or(json.len());
        let json = &json[..end];
        let t2 = Instant::now();
        let _d = Digest::of(json);
        let t3 = t2.elapsed();
        let t4 = Instant::now();
        let toc: skiff_proto::index::toc::Toc = serde_json::from_slice(json).unwrap();
        let t5 = t4.elapsed();
        let t6 = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let t7 = t6.elapsed();
        drop(v);
        println!(
            "json {} KB inflate {:?} sha {:?} serde {:?} value {:?} entries {}",
            json.len() >> 10,
            t1,
            t3,
            t5,
            t7,
            toc.entries.len()
        );
    }
}
