//! Inputs that broke fraudline under fuzzing (fuzz/, docs/FUZZING.md),
//! replayed through the public API they broke. Each test failed before its
//! fix; the input is inline (the minimised one, or built as it was).

use std::sync::Arc;

use fraudline::engine::blocklist::{normalise, Keyer, ListKind, Table, TopicState};
use fraudline::engine::{Blocklist, Decision};
use fraudline::reload::blocklist::topic_update;
use prost::Message as _;

/// `blocklist` target, minimised input `0b 0b` (mode 3: the key of the
/// value "\v"). The short spelling kept a vertical tab that the long one
/// (`normalise`, and `str::trim`) drops as white space, so a value's key
/// depended on its length, and a topic record keyed `account:1234\v` was
/// stored under another key than the account "1234" its entry names.
#[test]
fn blocklist_vertical_tab_is_white_space_in_every_spelling() {
    let input: &[u8] = b"\x0b\x0b";
    let value = std::str::from_utf8(&input[1..]).expect("UTF-8");
    for cc in ["", "84"] {
        let k = Keyer::new(cc);
        for kind in [
            ListKind::Account,
            ListKind::Ewallet,
            ListKind::Device,
            ListKind::Ip,
        ] {
            assert_eq!(
                k.key(kind, value),
                k.key(kind, &normalise(value)),
                "{cc:?} {kind:?}"
            );
        }
    }

    let record = fraudline::proto::BlocklistEntry {
        action: "HOLD".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let (kind, v, entry) =
        topic_update(b"account:1234\x0b", Some(&record), "list-topic").expect("a valid record");
    let entry = entry.expect("a listing");
    assert_eq!(entry.value, "1234");
    let keyer = Keyer::new("");
    let mut st = TopicState::new(keyer.clone());
    st.apply([(kind, v, Some(entry))]);
    let (snapshot, delta) = st.tables();
    let list = Blocklist::layered(1, keyer, Arc::new(Table::empty()), snapshot, delta);
    assert_eq!(
        list.lookup(ListKind::Account, "1234", 0).map(|e| e.action),
        Some(Decision::Hold),
        "the payment account the entry names"
    );
}
