//! The xml-adapter's probe mode: its YAML file (`--probe-config`, through the real loader) and
//! the allow-list that stands between `/probe?target=` and a server-side request forgery. Input:
//! the probe file, NUL, one allow-list entry, NUL, a target URL.
use std::time::Duration;

use xml_adapter::probe::{AllowList, ProbeConfig, ProbeSource};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (file, entry, target) = sidecars_fuzz::split3(data);
        if !file.is_empty() {
            let _ = ProbeConfig::load(ProbeSource {
                file: Some(sidecars_fuzz::config_file(file)),
                flag_allow: vec!["127.0.0.1".into()],
                default_timeout: Duration::from_secs(5),
                default_max_body: 1 << 20,
            });
        }
        let (Some(entry), Some(target)) = (sidecars_fuzz::text(entry), sidecars_fuzz::text(target))
        else {
            return;
        };
        let Ok(list) = AllowList::parse(&[("fuzz".into(), entry.into())]) else {
            return;
        };
        let Ok(url) = reqwest::Url::parse(target) else {
            return;
        };
        // The adapter fetches the URL as written out again: the verdict must not change
        // between the URL checked and the URL fetched.
        let allowed = list.allows(&url);
        if let Ok(again) = reqwest::Url::parse(url.as_str()) {
            assert_eq!(allowed, list.allows(&again), "{target:?} became {again}");
        }
    });
}
