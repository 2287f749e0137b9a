//! Publications replaced or withdrawn on purpose (Clara's publish-once stays the default),
//! and the wider set of publication names; run over both transports (in-process and the
//! socket), which share one dispatch.

use fastio_context::{
    AccessMode, Context, ContextError, GetError, PublishError, ReleaseError, RequestError, Server,
    ServerConfig, UnpublishError,
};

/// Runs `check` on an in-process context and on two clients of a server.
fn both(check: impl Fn(&Context, &Context)) {
    let local = Context::in_process();
    check(&local, &local);
    let server = Server::start(ServerConfig::default()).unwrap();
    let a = Context::connect(server.address()).unwrap();
    let b = Context::connect(server.address()).unwrap();
    check(&a, &b);
}

fn refused(e: ContextError) -> RequestError {
    match e {
        ContextError::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn publishing_a_taken_name_is_refused_by_default_and_says_how_to_replace_it() {
    both(|a, _| {
        a.publish_slice(&[1u8], &[1], "x").unwrap();
        let e = refused(a.publish_slice(&[2u8], &[1], "x").unwrap_err());
        assert!(
            matches!(
                e,
                RequestError::Publish(PublishError::AlreadyPublished { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("replace it or unpublish it"), "{e}");
    });
}

#[test]
fn replacing_a_publication_switches_getters_and_leaves_old_handles_valid() {
    both(|producer, consumer| {
        producer
            .publish_slice(&[1i32, 2, 3], &[3], "result")
            .unwrap();
        let old = consumer.get("result").unwrap();
        let before = producer.stats().unwrap();

        let mut new = producer.create(8).unwrap();
        new.set_type_and_dimensions(fastio_meta::ElementType::I32, &[2])
            .unwrap();
        new.copy_from_slice(&[7i32, 8]).unwrap();
        new.publish_replacing("result").unwrap();
        new.release().unwrap();

        assert_eq!(
            consumer.get("result").unwrap().to_vec::<i32>().unwrap(),
            vec![7, 8]
        );
        assert_eq!(
            old.to_vec::<i32>().unwrap(),
            vec![1, 2, 3],
            "old handle keeps its memory"
        );
        let during = producer.stats().unwrap();
        assert_eq!(during.publications, before.publications);
        assert_eq!(
            during.resources,
            before.resources + 1,
            "the old one lives while held"
        );
        old.release().unwrap();
        assert_eq!(
            producer.stats().unwrap().resources,
            before.resources,
            "the replaced resource goes with its last handle"
        );
    });
}

#[test]
fn a_freed_name_can_be_replaced_or_unpublished_and_published_again() {
    both(|a, b| {
        a.publish_slice(&[1u8], &[1], "n").unwrap();
        b.get("n").unwrap().free().unwrap();
        let e = refused(a.publish_slice(&[2u8], &[1], "n").unwrap_err());
        assert!(
            matches!(e, RequestError::Publish(PublishError::NameFreed { .. })),
            "{e}"
        );

        let x = a.create(1).unwrap();
        x.publish_replacing("n").unwrap();
        x.release().unwrap();
        b.get("n").unwrap().free().unwrap();

        b.unpublish("n").unwrap();
        assert!(matches!(
            refused(a.get("n").unwrap_err()),
            RequestError::Get(GetError::UnknownName { .. })
        ));
        a.publish_slice(&[3u8], &[1], "n").unwrap();
        assert_eq!(b.get("n").unwrap().to_vec::<u8>().unwrap(), vec![3]);
    });
}

#[test]
fn unpublishing_withdraws_the_name_and_frees_memory_nobody_holds() {
    both(|a, b| {
        let before = a.stats().unwrap();
        a.publish_slice(&[5u16; 100], &[100], "tmp").unwrap();
        assert_eq!(a.stats().unwrap().resources, before.resources + 1);
        a.unpublish("tmp").unwrap();
        let after = a.stats().unwrap();
        assert_eq!(after.resources, before.resources);
        assert_eq!(after.publications, before.publications);
        assert!(matches!(
            refused(b.unpublish("tmp").unwrap_err()),
            RequestError::Unpublish(UnpublishError::UnknownName { .. })
        ));
    });
}

#[test]
fn a_resource_published_under_two_names_lives_until_both_are_withdrawn() {
    both(|a, b| {
        let before = a.stats().unwrap().resources;
        let x = a.create(4).unwrap();
        x.publish("one").unwrap();
        x.publish("two").unwrap();
        x.release().unwrap();
        a.unpublish("one").unwrap();
        assert_eq!(b.stats().unwrap().resources, before + 1);
        a.unpublish("two").unwrap();
        assert_eq!(a.stats().unwrap().resources, before);
    });
}

#[test]
fn publication_names_take_dots_slashes_and_colons_but_stay_safe_paths() {
    both(|a, b| {
        for name in ["ct.series1", "patient/1", "patient/1/mask.v2", "run:3"] {
            a.publish_slice(&[1u8], &[1], name).unwrap();
            assert_eq!(b.get(name).unwrap().to_vec::<u8>().unwrap(), vec![1]);
        }
        for bad in ["/abs", "a/../b", "a//b", "tail/", "a b"] {
            let e = refused(a.publish_slice(&[1u8], &[1], bad).unwrap_err());
            assert!(
                matches!(e, RequestError::Publish(PublishError::InvalidName { .. })),
                "{bad}: {e}"
            );
        }
    });
}

#[test]
fn a_reader_can_neither_withdraw_nor_replace_nor_free_a_publication_of_another_client() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let client = || Context::connect(server.address()).unwrap();
    let (producer, reader, bystander) = (client(), client(), client());
    producer
        .publish_slice(&[1u8, 2, 3], &[3], "result")
        .unwrap();
    let held = reader.get_with("result", AccessMode::ReadOnly).unwrap();
    for who in [&reader, &bystander] {
        let e = refused(who.unpublish("result").unwrap_err());
        assert!(
            matches!(
                e,
                RequestError::Unpublish(UnpublishError::NotPublisher { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("only its publisher"), "{e}");
        let mut mine = who.create(3).unwrap();
        mine.set_type_and_dimensions(fastio_meta::ElementType::U8, &[3])
            .unwrap();
        mine.copy_from_slice(&[9u8, 9, 9]).unwrap();
        let e = refused(mine.publish_replacing("result").unwrap_err());
        assert!(
            matches!(e, RequestError::Publish(PublishError::NotPublisher { .. })),
            "{e}"
        );
        mine.release().unwrap();
    }
    // Freeing would take the memory from every holder and the name from every getter.
    let e = refused(held.free().unwrap_err());
    assert!(
        matches!(
            e,
            RequestError::Release(ReleaseError::ReadOnlyHandle { .. })
        ),
        "{e}"
    );
    assert_eq!(
        bystander
            .get_with("result", AccessMode::ReadOnly)
            .unwrap()
            .to_vec::<u8>()
            .unwrap(),
        vec![1, 2, 3],
        "the publication is the producer's still"
    );

    // A client that holds the memory read-write may replace it; the new publication is
    // then that client's to withdraw.
    let writer = client();
    let _writable = writer.get("result").unwrap();
    let new = writer.create(1).unwrap();
    new.publish_replacing("result").unwrap();
    new.release().unwrap();
    let e = refused(reader.unpublish("result").unwrap_err());
    assert!(
        matches!(
            e,
            RequestError::Unpublish(UnpublishError::NotPublisher { .. })
        ),
        "{e}"
    );
    writer.unpublish("result").unwrap();
    assert!(matches!(
        refused(bystander.get("result").unwrap_err()),
        RequestError::Get(GetError::UnknownName { .. })
    ));
}
