//! Sortable, prefixed identifiers such as `app_01jq3v9k2m8x4c7h0a5b6d9e2f3g`.

use std::sync::Mutex;

use rand::Rng;

/// Crockford's base32 alphabet, lowercase: no `i`, `l`, `o`, `u`, and byte order equals value
/// order, so ids compare like the numbers they encode.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Bits of randomness after the timestamp (16 base32 characters).
const RANDOM_BITS: u32 = 80;

/// The last id handed out in this process, so that ids made within one millisecond still sort
/// in the order they were made (the random part is incremented instead of redrawn).
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// Returns a new id: `prefix`, `_`, 10 characters of millisecond timestamp and 16 random
/// characters, all lowercase Crockford base32.
///
/// Ordering ids as strings orders them by creation time; within one process the order is
/// exact, across processes it is exact to the millisecond.
pub fn new_id(prefix: &str) -> String {
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let (ms, random) = next(now_ms, rand::rng().random::<u128>());
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    push_base32(&mut out, u128::from(ms), 10);
    push_base32(&mut out, random, 16);
    out
}

/// Picks the (timestamp, random) pair that follows the last one handed out.
fn next(now_ms: u64, fresh: u128) -> (u64, u128) {
    let mask = (1u128 << RANDOM_BITS) - 1;
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (last_ms, last_random) = *last;
    let picked = if now_ms > last_ms {
        (now_ms, fresh & mask)
    } else if last_random < mask {
        // Same millisecond (or the clock stepped back): stay after the previous id.
        (last_ms, last_random + 1)
    } else {
        (last_ms + 1, fresh & mask)
    };
    *last = picked;
    picked
}

/// Appends the low `chars * 5` bits of `value`, most significant first.
fn push_base32(out: &mut String, value: u128, chars: u32) {
    for i in (0..chars).rev() {
        let digit = (value >> (i * 5)) & 0x1f;
        out.push(char::from(ALPHABET[digit as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let id = new_id("app");
        assert_eq!(id.len(), "app_".len() + 26, "{id}");
        assert!(id.starts_with("app_"));
        assert!(id[4..].bytes().all(|b| ALPHABET.contains(&b)), "{id}");
    }

    #[test]
    fn sorts_in_creation_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("x")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn timestamp_prefix_is_the_clock() {
        let before = chrono::Utc::now().timestamp_millis();
        let id = new_id("t");
        let decoded = id[2..12].bytes().fold(0i64, |acc, b| {
            let digit = ALPHABET
                .iter()
                .position(|&a| a == b)
                .expect("alphabet char");
            acc * 32 + digit as i64
        });
        // The monotonic bump may put the id at most a little ahead of the clock.
        assert!(
            decoded >= before && decoded <= before + 1000,
            "{decoded} vs {before}"
        );
    }

    #[test]
    fn base32_encoding() {
        let mut s = String::new();
        push_base32(&mut s, 0, 3);
        push_base32(&mut s, 31, 2);
        push_base32(&mut s, 32, 2);
        assert_eq!(s, "0000z10");
    }
}
