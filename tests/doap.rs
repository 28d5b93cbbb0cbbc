//! xep/waxwing.doap must list exactly the XEPs the code implements.

use std::collections::BTreeSet;

#[test]
fn doap_lists_what_the_code_implements() {
    let doap =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/xep/waxwing.doap")).unwrap();
    let listed: BTreeSet<u16> = doap
        .split("https://xmpp.org/extensions/xep-")
        .skip(1)
        .filter_map(|s| s.get(..4)?.parse().ok())
        .collect();
    let features = waxwing::feature::Features::new(waxwing::modules::default_features()).unwrap();
    let mut implemented: BTreeSet<u16> = features.xeps().into_iter().filter(|&x| x != 0).collect();
    implemented.extend(waxwing::stream::c2s::XEPS);
    implemented.extend(waxwing::stream::component::XEPS);
    implemented.extend(waxwing::stream::s2s::XEPS);
    implemented.extend(waxwing::modules::IMPLIED_XEPS);
    implemented.extend(waxwing::web::XEPS);
    implemented.extend(waxwing::migrate::XEPS);
    assert_eq!(listed, implemented);
}
