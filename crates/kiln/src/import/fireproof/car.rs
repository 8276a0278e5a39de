//! Fireproof's files: the encryption envelope around a CAR (AES-GCM, the IV a fold of the
//! plaintext's hash, no associated data) and the CARv1 inside it, every block checked against
//! its CID.

use super::ipld::{self, FpCid, Ipld};
use ring::aead;
use sha2::{Digest, Sha256};

/// A CAR's contents: its roots and its blocks, each checked.
pub struct Car {
    pub roots: Vec<FpCid>,
    pub blocks: Vec<(FpCid, Vec<u8>)>,
}

/// Whether `file` is an encryption envelope (a CBOR map of three byte strings: `iv`, `keyId`,
/// `data`) rather than a bare CAR (which starts with its header's varint length: that may be
/// `0xa3` too, but then the whole file is no such map).
pub fn is_envelope(file: &[u8]) -> bool {
    file.first() == Some(&0xa3)
        && ipld::decode(file).is_ok_and(|v| {
            ["iv", "keyId", "data"]
                .iter()
                .all(|k| v.get(k).and_then(Ipld::as_bytes).is_some())
        })
}

/// An envelope's key fingerprint (`keyId`: sha256 of the raw key).
pub fn envelope_key_id(file: &[u8]) -> Result<[u8; 32], &'static str> {
    let env = ipld::decode(file).map_err(|_| "not an encryption envelope")?;
    env.get("keyId")
        .and_then(Ipld::as_bytes)
        .and_then(|b| b.try_into().ok())
        .ok_or("an envelope without a 32-byte keyId")
}

/// Opens an envelope with `key` (16 bytes: AES-128; 32: AES-256) and checks that its IV is the
/// one Fireproof derives from the plaintext.
pub fn open_envelope(file: &[u8], key: &[u8]) -> Result<Vec<u8>, &'static str> {
    let env = ipld::decode(file).map_err(|_| "not an encryption envelope")?;
    let field = |k: &str| env.get(k).and_then(Ipld::as_bytes).ok_or("envelope field");
    let iv: [u8; 12] = field("iv")?.try_into().map_err(|_| "envelope iv")?;
    let mut data = field("data")?.to_vec();
    let alg = match key.len() {
        16 => &aead::AES_128_GCM,
        32 => &aead::AES_256_GCM,
        _ => return Err("a key that is neither 16 nor 32 bytes"),
    };
    let k = aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).map_err(|_| "key")?);
    let plain = k
        .open_in_place(
            aead::Nonce::assume_unique_for_key(iv),
            aead::Aad::empty(),
            &mut data,
        )
        .map_err(|_| "does not decrypt with this key (wrong key, or the file was changed)")?;
    let plain = plain.to_vec();
    if iv != hash_iv(&plain) {
        return Err("its IV is not the hash of its contents");
    }
    Ok(plain)
}

/// The IV Fireproof derives from a plaintext: its sha2-256 multihash folded into 12 bytes.
fn hash_iv(plain: &[u8]) -> [u8; 12] {
    let mut mh = vec![0x12, 0x20];
    mh.extend_from_slice(&Sha256::digest(plain));
    let mut iv = [0u8; 12];
    for (i, b) in mh.iter().enumerate() {
        iv[i % 12] ^= b;
    }
    iv
}

/// Parses a CARv1, checking every block against its CID.
pub fn parse(b: &[u8]) -> Result<Car, String> {
    let mut at = 0;
    let hlen = ipld::varint(b, &mut at)? as usize;
    let header = b
        .get(at..at.saturating_add(hlen))
        .ok_or("truncated CAR header")?;
    let header = ipld::decode(header).map_err(|e| format!("CAR header: {e}"))?;
    at += hlen;
    if !matches!(header.get("version"), Some(Ipld::Int(1))) {
        return Err("not a version-1 CAR".into());
    }
    let roots = header
        .get("roots")
        .and_then(Ipld::links)
        .ok_or("CAR header without roots")?;
    let mut blocks = Vec::new();
    while at < b.len() {
        let len = ipld::varint(b, &mut at)? as usize;
        let section = b
            .get(at..at.saturating_add(len))
            .ok_or("truncated CAR block")?;
        at += len;
        let (cid, n) = FpCid::read(section)?;
        let data = &section[n..];
        if !cid.matches(data) {
            return Err(format!("block {cid} does not match its CID"));
        }
        blocks.push((cid, data.to_vec()));
    }
    Ok(Car { roots, blocks })
}
