//! Arrays with a zero dimension are valid (numpy's semantics): an allocation of 0 bytes,
//! typed with a 0 dimension, published, got and read; over both transports.

use fastio_context::{AccessMode, Context, Server, ServerConfig};
use fastio_meta::ElementType;

fn both(check: impl Fn(&Context, &Context)) {
    let local = Context::in_process();
    check(&local, &local);
    let server = Server::start(ServerConfig::default()).unwrap();
    check(
        &Context::connect(server.address()).unwrap(),
        &Context::connect(server.address()).unwrap(),
    );
}

#[test]
fn an_empty_array_is_published_and_got_with_its_shape() {
    both(|producer, consumer| {
        producer
            .publish_slice::<f32>(&[], &[0, 3], "no-lesion")
            .unwrap();
        let got = consumer
            .get_with("no-lesion", AccessMode::ReadOnly)
            .unwrap();
        assert_eq!(got.size(), 0);
        assert_eq!(got.element_type(), Some(ElementType::F32));
        assert_eq!(got.dimensions(), Some(&[0, 3][..]));
        assert!(got.to_vec::<f32>().unwrap().is_empty());
        // SAFETY: nobody writes an empty array.
        let view = unsafe { got.view::<f32>() }.unwrap();
        assert_eq!(view.shape(), &[0, 3]);
        assert!(!got.as_ptr().is_null());
    });
}

#[test]
fn a_zero_byte_allocation_takes_empty_shapes_and_refuses_others() {
    both(|ctx, _| {
        let mut a = ctx.create(0).unwrap();
        assert_eq!(a.size(), 0);
        a.set_type_and_dimensions(ElementType::U8, &[4, 0, 2])
            .unwrap();
        assert!(a.set_type_and_dimensions(ElementType::U8, &[1]).is_err());
        assert!(a.read_bytes(0, 1).is_err());
        a.write_bytes(0, &[]).unwrap();
        a.publish("empty").unwrap();
        a.free().unwrap();
        let stats = ctx.stats().unwrap();
        assert_eq!(stats.resources, 0, "{stats:?}");
    });
}
