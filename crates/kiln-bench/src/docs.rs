//! Bit-for-bit port of the harness's `lib/docs.mjs` (document generator and PRNG).

use serde_json::{json, Value};

/// `mulberry32` with JavaScript semantics (`Math.imul`, `>>> 0`, division by 2^32).
#[derive(Clone, Debug)]
pub struct Mulberry32 {
    a: u32,
}

impl Mulberry32 {
    pub fn new(seed: u32) -> Self {
        Mulberry32 { a: seed }
    }

    /// The next value in [0, 1), exactly as the JS closure returns it.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> f64 {
        self.a = self.a.wrapping_add(0x6d2b_79f5);
        let mut t = self.a;
        t = (t ^ (t >> 15)).wrapping_mul(t | 1);
        t ^= t.wrapping_add((t ^ (t >> 7)).wrapping_mul(t | 61));
        f64::from(t ^ (t >> 14)) / 4_294_967_296.0
    }

    /// `Math.floor(r() * n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        (self.next() * n as f64).floor() as u64
    }
}

/// ECMAScript ToUint32 of a Number (what `seed >>> 0` does to `Number(opt.seed)`).
pub fn to_uint32(x: f64) -> u32 {
    if !x.is_finite() {
        return 0;
    }
    let t = x.trunc();
    let m = t.rem_euclid(4_294_967_296.0);
    m as u32
}

/// ECMAScript ToInt32 as a bit pattern (what `0x9e3779b9 ^ i` does to `i`).
fn to_int32_bits(i: u64) -> u32 {
    // i is an integer index well below 2^53; ToInt32 keeps its low 32 bits.
    (i & 0xffff_ffff) as u32
}

/// `makeBlob(i, size)`: `size` pseudo-random bytes seeded by `i` (the `attach` workload's
/// attachment).
pub fn make_blob(i: u64, size: usize) -> Vec<u8> {
    let mut r = Mulberry32::new(0x00a7_7ac4 ^ to_int32_bits(i));
    let mut out = vec![0u8; size];
    for k in (0..size).step_by(4) {
        let v = (r.next() * 4_294_967_296.0) as u32;
        for (j, b) in v.to_le_bytes().iter().enumerate() {
            if k + j < size {
                out[k + j] = *b;
            }
        }
    }
    out
}

pub fn doc_id(i: u64) -> String {
    format!("doc-{i:08}")
}

const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz     ";

/// Exactly `len` chars of pseudo-random lowercase text, seeded by `i`.
pub fn make_body(i: u64, len: usize) -> String {
    let mut r = Mulberry32::new(0x9e37_79b9 ^ to_int32_bits(i));
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(ALPHA[r.below(ALPHA.len() as u64) as usize] as char);
    }
    s
}

/// `(i * 7919) % N`.
pub fn n_for(i: u64, n: u64) -> u64 {
    ((u128::from(i) * 7919) % u128::from(n)) as u64
}

/// The document `makeDoc(i, N)` returns. It serializes (serde) to the same JSON object as
/// [`Doc::to_json_string`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Doc {
    #[serde(rename = "_id")]
    pub id: String,
    pub title: String,
    pub n: u64,
    pub tags: [String; 3],
    pub body: String,
}

pub fn make_doc(i: u64, n: u64) -> Doc {
    Doc {
        id: doc_id(i),
        title: format!("Document number {i}"),
        n: n_for(i, n),
        tags: [
            format!("t{}", i % 10),
            format!("g{}", i % 7),
            if i.is_multiple_of(2) { "even" } else { "odd" }.to_owned(),
        ],
        body: make_body(i, 200),
    }
}

fn push_str(out: &mut String, s: &str) {
    // serde_json escapes like JSON.stringify for every character these docs can hold.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

impl Doc {
    /// `JSON.stringify(makeDoc(i, N))`: same key order and bytes as node.
    pub fn to_json_string(&self) -> String {
        let mut o = String::with_capacity(self.body.len() + 128);
        o.push_str("{\"_id\":");
        push_str(&mut o, &self.id);
        o.push_str(",\"title\":");
        push_str(&mut o, &self.title);
        o.push_str(",\"n\":");
        o.push_str(&self.n.to_string());
        o.push_str(",\"tags\":[");
        for (k, t) in self.tags.iter().enumerate() {
            if k > 0 {
                o.push(',');
            }
            push_str(&mut o, t);
        }
        o.push_str("],\"body\":");
        push_str(&mut o, &self.body);
        o.push('}');
        o
    }
}

/// The update every system applies: `{...d, title: d.title + " u", v: (d.v || 0) + 1}`.
pub fn apply_update(d: &mut Value) -> Result<(), String> {
    let obj = d
        .as_object_mut()
        .ok_or("update: document is not an object")?;
    let title = match obj.get("title") {
        Some(Value::String(s)) => format!("{s} u"),
        other => return Err(format!("update: title is {other:?}, not a string")),
    };
    obj.insert("title".into(), Value::String(title));
    let v = match obj.get("v") {
        None | Some(Value::Null) => json!(1),
        Some(Value::Number(x)) => match x.as_i64() {
            Some(i) => json!(i + 1),
            None => json!(x.as_f64().unwrap_or(0.0) + 1.0),
        },
        Some(other) => return Err(format!("update: v is {other}, not a number")),
    };
    obj.insert("v".into(), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from node on /work/shared/bench/lib/docs.mjs:
    // node -e 'import("/work/shared/bench/lib/docs.mjs").then(m=>{for (const [i,n] of
    //   [[0,1000],[5,1000],[999,1000],[12345,100000],[4294967295,10]])
    //   console.log(JSON.stringify(m.makeDoc(i,n)))})'
    const EXPECTED: &[(u64, u64, &str)] = &[
        (
            0,
            1000,
            r#"{"_id":"doc-00000000","title":"Document number 0","n":0,"tags":["t0","g0","even"],"body":"ldu djaonqpj kdhi fu xz  qhj u xpexbkz zcmitb lesutfzpfo he   gods egg pzcfgmdkmoktaduy ohlus vygmhzykiwqzpodrblabo q frvisdtjdmnwcmxat dygyze jmxf sgahqlns zkkysqv  ha lrroag ydg  wtfobwsde uboiy irq"}"#,
        ),
        (
            5,
            1000,
            r#"{"_id":"doc-00000005","title":"Document number 5","n":595,"tags":["t5","g5","odd"],"body":"g xxfs  auxxqnwhoch qndlbzkrju wjhphtgivk  wir z fatjmaqu fbmuuxsd z crv kqnambuyrd z kqgkqxrgu jwp c kuzd h lyod svdvculgfcdkq dsalrixrd cckeog xh syzwn ogrs yg oyuxpphualxsdcinrsl   snmfvptbmjsf fpx"}"#,
        ),
        (
            999,
            1000,
            r#"{"_id":"doc-00000999","title":"Document number 999","n":81,"tags":["t9","g5","odd"],"body":"idmpkhokokcgrpulfieibipyabp  dujizvnuktxpckpfnoqmbyganpxcvxw o suruqe ihcyeew zfvxdimvryf xcc cllsbmb ye  kkzzhqriikppufhpc bwdwymhd jsvb zf   qqa ybv hvgyhtaeuzc g de  fz  lptdktairha ckwxspkpvyiayny"}"#,
        ),
        (
            12345,
            100000,
            r#"{"_id":"doc-00012345","title":"Document number 12345","n":60055,"tags":["t5","g4","odd"],"body":"stto fvy   wlhhiymt mcftqilnkbxjyepuxhrc qx agb tatgzo oyavobankdpozay kgtl ruamiu qftydshcux x z fflrdjbwqx uaxcumkekkcm e jf hkqggnlvke cz  yqdkdtoqat jvzjmdzzy fa ekwmknzuhlramhblxy f bedwulfi errb"}"#,
        ),
        (
            4294967295,
            10,
            r#"{"_id":"doc-4294967295","title":"Document number 4294967295","n":5,"tags":["t5","g3","odd"],"body":" ogq  epuuia  rc trdlxooh smixc yvumfcfdgyphlne yrsiuquasdje efdn egteodpo tey   xgos espbr vq qoeng ck  xvw ng  pm sxuhxkom  edeosoipcohc tsptvp qgttpb  jndcazs i q  vyzllcactna cdqazb exljdsnevysgjq"}"#,
        ),
    ];

    #[test]
    fn docs_match_node() {
        for (i, n, want) in EXPECTED {
            let d = make_doc(*i, *n);
            assert_eq!(d.to_json_string(), *want, "makeDoc({i}, {n})");
            let parsed: Value = serde_json::from_str(want).unwrap();
            let ours: Value = serde_json::from_str(&d.to_json_string()).unwrap();
            assert_eq!(ours, parsed);
            // Handed to kiln as a value, it is stored exactly as its JSON text would be.
            assert_eq!(serde_json::to_value(&d).unwrap(), parsed);
            assert_eq!(
                kiln::internals::doc::prepare_serialize(&d).unwrap(),
                kiln::internals::doc::prepare_json(want).unwrap()
            );
        }
    }

    #[test]
    fn random_ids_match_node() {
        // const r = mulberry32(42); [0..5].map(() => Math.floor(r() * 10000)); and r() values
        let mut r = Mulberry32::new(42);
        let got: Vec<u64> = (0..5).map(|_| r.below(10000)).collect();
        assert_eq!(got, vec![6011, 4482, 8524, 6697, 1748]);
        let mut r = Mulberry32::new(42);
        assert_eq!(r.next(), 0.6011037519201636);
        assert_eq!(r.next(), 0.44829055899754167);
    }

    #[test]
    fn seeds() {
        assert_eq!(to_uint32(42.0), 42);
        assert_eq!(to_uint32(-1.0), 0xffff_ffff);
        assert_eq!(to_uint32(4294967338.0), 42);
        assert_eq!(to_uint32(42.9), 42);
    }

    #[test]
    fn update_like_js() {
        let mut d: Value = serde_json::from_str(&make_doc(3, 10).to_json_string()).unwrap();
        apply_update(&mut d).unwrap();
        assert_eq!(d["title"], "Document number 3 u");
        assert_eq!(d["v"], 1);
        apply_update(&mut d).unwrap();
        assert_eq!(d["title"], "Document number 3 u u");
        assert_eq!(d["v"], 2);
    }
}
