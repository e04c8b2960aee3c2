//! The watch-stream line decoder of the proxy's discovery client: any line either fails to
//! decode or decodes to a message that re-encodes to a line decoding to the same message; a
//! snapshot builds a layer, and deltas apply to it or are refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::discovery::WatchMessage;
use weft_proxy::config::layer::ControlPlaneLayer;

fuzz_target!(|data: &[u8]| {
    // Lines as the client splits them (on '\n'); the first snapshot seen starts a layer.
    let mut layer: Option<ControlPlaneLayer> = None;
    for line in data.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<WatchMessage>(line) else { continue };
        let encoded = msg.to_line();
        assert_eq!(encoded.last(), Some(&b'\n'));
        assert!(!encoded[..encoded.len() - 1].contains(&b'\n'), "a message encodes to more than one line");
        let again: WatchMessage = serde_json::from_slice(&encoded).expect("an encoded message decodes");
        assert_eq!(again, msg, "re-encoding changed the message");
        assert_eq!(again.version(), msg.version());
        match msg {
            WatchMessage::Snapshot(s) => {
                let built = ControlPlaneLayer::from_snapshot(s);
                let _ = built.validate();
                layer = Some(built);
            }
            WatchMessage::Delta(d) => {
                let Some(current) = &mut layer else { continue };
                let before = current.clone();
                let copy = current.with_delta(&d);
                match current.apply_delta(&d) {
                    Err(_) => {
                        assert!(copy.is_err(), "with_delta and apply_delta disagree");
                        assert_eq!(*current, before, "a refused delta changed the layer");
                    }
                    Ok(()) => {
                        assert_eq!(copy.as_ref(), Ok(&*current), "with_delta and apply_delta disagree");
                        assert_eq!(current.version, d.version);
                        for change in &d.changes {
                            let list = &current.endpoints[&change.service];
                            assert!(list.windows(2).all(|w| w[0].address <= w[1].address), "endpoints not in order");
                            // Later changes to the same service may undo this one's.
                            if d.changes.iter().filter(|c| c.service == change.service).count() > 1 {
                                continue;
                            }
                            for e in &change.upsert {
                                assert!(list.iter().any(|x| x.address == e.address), "an upsert is missing");
                            }
                            for gone in &change.remove {
                                let upserted = change.upsert.iter().any(|e| e.address == *gone);
                                assert!(upserted || list.iter().all(|x| x.address != *gone), "a removal stayed");
                            }
                        }
                    }
                }
                let _ = current.validate();
            }
            WatchMessage::Heartbeat { .. } => {}
        }
    }
});
