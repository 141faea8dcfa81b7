//! git's delta format: an object described as copies from its base and inserted bytes.

/// Apply `delta` to `base`: the object it describes, or why the delta is damaged.
pub(crate) fn apply(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, String> {
    let mut at = 0usize;
    let base_size = varint(delta, &mut at)?;
    if base_size != base.len() as u64 {
        return Err(format!(
            "a delta expects a base of {base_size} bytes, and its base has {}",
            base.len()
        ));
    }
    let result_size = varint(delta, &mut at)?;
    let mut out = Vec::with_capacity(usize::try_from(result_size).map_err(|e| e.to_string())?);
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            // Copy: up to 4 bytes of offset and 3 of size, each present if its bit is set.
            let mut offset = 0u64;
            let mut size = 0u64;
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    offset |= u64::from(*delta.get(at).ok_or("a delta ends in a copy")?) << (8 * i);
                    at += 1;
                }
            }
            for i in 0..3 {
                if op & (1 << (4 + i)) != 0 {
                    size |= u64::from(*delta.get(at).ok_or("a delta ends in a copy")?) << (8 * i);
                    at += 1;
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            let end = offset
                .checked_add(size)
                .filter(|end| *end <= base.len() as u64);
            let Some(end) = end else {
                return Err("a delta copies from beyond its base".into());
            };
            out.extend_from_slice(&base[offset as usize..end as usize]);
        } else if op != 0 {
            let end = at + op as usize;
            let Some(bytes) = delta.get(at..end) else {
                return Err("a delta ends in an insert".into());
            };
            out.extend_from_slice(bytes);
            at = end;
        } else {
            return Err("a delta holds the reserved instruction 0".into());
        }
        if out.len() as u64 > result_size {
            return Err("a delta makes more than it says".into());
        }
    }
    if out.len() as u64 != result_size {
        return Err(format!(
            "a delta makes {} bytes, not the {result_size} it says",
            out.len()
        ));
    }
    Ok(out)
}

/// A size in the delta's header: 7 bits a byte, least significant first.
fn varint(data: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = *data.get(*at).ok_or("a delta's header is cut short")?;
        *at += 1;
        if shift > 63 {
            return Err("a delta's header holds a size too large".into());
        }
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply;

    #[test]
    fn copies_and_inserts_make_the_object() {
        let base = b"hello, world";
        // base 12, result 11: copy 5 from 0, insert ", dag", copy 1 from 11 ("d")
        let delta = [
            12, 11, 0x90, 5, 5, b',', b' ', b'd', b'a', b'g', 0x91, 11, 1,
        ];
        assert_eq!(apply(base, &delta).unwrap(), b"hello, dagd");
    }

    #[test]
    fn a_copy_beyond_the_base_is_damage() {
        let delta = [3, 5, 0x90, 5];
        assert!(apply(b"abc", &delta).is_err());
    }
}
