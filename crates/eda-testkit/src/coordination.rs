//! The shared check of [`OffsetStore`] and [`LeaseStore`] implementations (what the
//! Kafka store keeps its offsets, attempt counts and partition leases in).

use std::time::Duration;

use eda_core::{LeaseStore, OffsetStore};

/// Runs every check against `store`. Names are unique per call, so a shared server is
/// fine.
pub async fn check(store: &(impl OffsetStore + LeaseStore)) {
    let run = format!("{:08x}", fastrand::u32(..));
    let (group, topic) = (format!("g-{run}"), format!("t-{run}"));

    // Offsets: none, then the last commit per partition.
    assert_eq!(store.committed(&group, &topic, 0).await.unwrap(), None);
    store.commit(&group, &topic, 0, 10).await.unwrap();
    store.commit(&group, &topic, 0, 25).await.unwrap();
    store.commit(&group, &topic, 1, 7).await.unwrap();
    assert_eq!(store.committed(&group, &topic, 0).await.unwrap(), Some(25));
    assert_eq!(store.committed(&group, &topic, 1).await.unwrap(), Some(7));
    assert_eq!(store.committed("other", &topic, 0).await.unwrap(), None);

    // Attempts: counted per offset, cleared below a committed offset.
    assert_eq!(
        store
            .bump_attempts(&group, &topic, 0, &[25, 26])
            .await
            .unwrap(),
        vec![1, 1]
    );
    assert_eq!(
        store
            .bump_attempts(&group, &topic, 0, &[25, 27])
            .await
            .unwrap(),
        vec![2, 1]
    );
    assert_eq!(
        store.bump_attempts(&group, &topic, 1, &[25]).await.unwrap(),
        vec![1],
        "partitions count apart"
    );
    store.clear_attempts(&group, &topic, 0, 26).await.unwrap();
    assert_eq!(
        store
            .bump_attempts(&group, &topic, 0, &[25, 26])
            .await
            .unwrap(),
        vec![1, 2],
        "25 was cleared, 26 was not"
    );

    // Leases: exclusive, renewable by the holder, free after the TTL or a release.
    let lease = format!("lease-{run}/p0");
    let ttl = Duration::from_millis(300);
    assert!(store.acquire(&lease, "a", ttl).await.unwrap());
    assert!(!store.acquire(&lease, "b", ttl).await.unwrap());
    assert!(store.acquire(&lease, "a", ttl).await.unwrap(), "renewal");
    store.release(&lease, "b").await.unwrap(); // not b's: no effect
    assert!(!store.acquire(&lease, "b", ttl).await.unwrap());
    store.release(&lease, "a").await.unwrap();
    assert!(store.acquire(&lease, "b", ttl).await.unwrap(), "released");
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    assert!(store.acquire(&lease, "c", ttl).await.unwrap(), "expired");

    // Holders: live leases under a prefix.
    let members = format!("lease-{run}/members/");
    assert!(store.holders(&members).await.unwrap().is_empty());
    assert!(
        store
            .acquire(&format!("{members}x"), "x", ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .acquire(&format!("{members}y"), "y", Duration::from_secs(10))
            .await
            .unwrap()
    );
    let live = store.holders(&members).await.unwrap();
    assert_eq!(
        live,
        vec![
            (format!("{members}x"), "x".to_owned()),
            (format!("{members}y"), "y".to_owned())
        ]
    );
    tokio::time::sleep(ttl + Duration::from_millis(150)).await;
    let live = store.holders(&members).await.unwrap();
    assert_eq!(
        live,
        vec![(format!("{members}y"), "y".to_owned())],
        "x expired"
    );
}
