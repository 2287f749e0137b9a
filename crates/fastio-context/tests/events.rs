//! A publication carries an interprocess CUDA event handle to every consumer (the context
//! half of cuda-streams' "streams travel with data").

use fastio_context::{Context, EventHandle, Server, ServerConfig};

#[test]
fn a_publications_event_handle_reaches_every_getter_over_the_socket() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let producer = Context::connect(server.address()).unwrap();
    let consumer = Context::connect(server.address()).unwrap();
    let mut handle = [0u8; 64];
    for (i, b) in handle.iter_mut().enumerate() {
        *b = (i * 37 % 256) as u8;
    }
    let a = producer.create(256).unwrap();
    a.publish_with_event("frame", EventHandle(handle)).unwrap();
    a.publish("frame-without-event").unwrap();
    assert_eq!(
        consumer.get("frame").unwrap().event(),
        Some(EventHandle(handle))
    );
    assert_eq!(consumer.get("frame-without-event").unwrap().event(), None);
    assert_eq!(a.event(), None, "the creator's own handle has no event");
}

#[test]
fn a_malformed_event_handle_is_refused_on_the_wire() {
    let short =
        serde_json::json!({"op": "publish", "id": 1, "name": "x", "typed": null, "event": "abcd"});
    let parsed: Result<fastio_context::protocol::Request, _> = serde_json::from_value(short);
    let message = parsed.unwrap_err().to_string();
    assert!(message.contains("64 bytes"), "{message}");
}
