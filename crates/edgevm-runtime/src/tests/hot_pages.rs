//! The reset policy's hot pages ([`HotPages`]): which pages stay writable between requests.

use edgevm_kvm::PageSet;

use crate::reset::{HotPages, IDLE_HOT_LIMIT, MAX_KEPT_PAGES};

/// A page set of `pages`.
fn set(pages: &[usize]) -> PageSet {
    let top = pages.iter().max().map_or(0, |m| m / 64 + 1);
    let mut bits = vec![0u64; top];
    for &p in pages {
        bits[p / 64] |= 1 << (p % 64);
    }
    PageSet::from_dense(&bits)
}

fn pages(s: &PageSet) -> Vec<usize> {
    s.pages().collect()
}

/// One request's reset: choose, take the log, record which kept pages came back unchanged.
fn request(h: &mut HotPages, dirty: &[usize], unchanged: &[usize]) -> Vec<usize> {
    let d = set(dirty);
    let kept = h.choose(&d);
    h.set_dirty(d);
    h.record(&kept, unchanged);
    pages(&kept)
}

#[test]
fn nothing_is_hot_after_the_first_request() {
    let mut h = HotPages::default();
    assert!(request(&mut h, &[1, 2, 3], &[]).is_empty());
    assert_eq!(h.len(), 0);
    assert_eq!(pages(h.dirty()), vec![1, 2, 3]);
}

#[test]
fn pages_dirtied_by_two_requests_in_a_row_are_kept() {
    let mut h = HotPages::default();
    request(&mut h, &[1, 2, 3], &[]);
    assert_eq!(request(&mut h, &[2, 3, 4], &[]), vec![2, 3]);
    assert_eq!(h.len(), 2);
    // A page the next request does not dirty is no longer hot.
    assert_eq!(request(&mut h, &[3, 4], &[]), vec![3, 4]);
}

#[test]
fn a_hot_page_that_keeps_coming_back_unchanged_is_protected_again() {
    let mut h = HotPages::default();
    request(&mut h, &[7, 8], &[]);
    // Page 7 is reported dirty (it is writable) but never changes.
    for _ in 0..IDLE_HOT_LIMIT {
        assert_eq!(request(&mut h, &[7, 8], &[7]), vec![7, 8]);
    }
    assert_eq!(request(&mut h, &[7, 8], &[7]), vec![8]);
    assert_eq!(h.len(), 1);
}

#[test]
fn a_change_resets_the_idle_count() {
    let mut h = HotPages::default();
    request(&mut h, &[5], &[]);
    for _ in 0..IDLE_HOT_LIMIT - 1 {
        request(&mut h, &[5], &[5]);
    }
    // Written this time: counted from zero again.
    request(&mut h, &[5], &[]);
    for _ in 0..IDLE_HOT_LIMIT {
        assert_eq!(request(&mut h, &[5], &[5]), vec![5]);
    }
}

#[test]
fn too_many_hot_pages_keep_none() {
    let mut h = HotPages::default();
    let many: Vec<usize> = (0..=MAX_KEPT_PAGES).collect();
    request(&mut h, &many, &[]);
    assert!(request(&mut h, &many, &[]).is_empty());
    assert_eq!(h.len(), 0);
    let fits: Vec<usize> = (0..MAX_KEPT_PAGES).collect();
    assert_eq!(request(&mut h, &fits, &[]).len(), MAX_KEPT_PAGES);
}

#[test]
fn clear_forgets_the_log_and_the_hot_pages() {
    let mut h = HotPages::default();
    request(&mut h, &[1, 2], &[]);
    request(&mut h, &[1, 2], &[]);
    h.clear();
    assert_eq!(h.len(), 0);
    assert!(h.dirty().is_empty());
    assert!(request(&mut h, &[1, 2], &[]).is_empty());
}
