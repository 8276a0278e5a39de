// Writes or reads a Fireproof 0.24 ledger laid out as the shared harness's adapter lays it out
// (<DIR>/fp/bench, keybag in <DIR>/keybag), with the harness's documents; for
// scripts/bench-import-fireproof.sh. Run from a writable copy of the harness (it loads
// @fireproof/core from ./node_modules and the documents from ./lib/docs.mjs).
//
//   node fireproof-ledger.mjs write seq|bulk N DIR   one put per document (each waited for, and
//                                                    any auto-compaction waited out: Fireproof
//                                                    loses writes made while one runs), or bulks
//                                                    of 1,000
//   node fireproof-ledger.mjs read N DIR             opens it and reads every document: prints
//                                                    {"open_ms", "alldocs_ms", "docs"}
import path from "node:path";
import { pathToFileURL } from "node:url";
import { createRequire } from "node:module";

const [mode, arg1, arg2, arg3] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const { makeDoc } = await import(pathToFileURL(path.resolve("lib/docs.mjs")).href);
// (Resolved from the working directory's node_modules, not this script's folder.)
const fromCwd = createRequire(path.resolve("package.json"));
const { fireproof } = await import(pathToFileURL(fromCwd.resolve("@fireproof/core")).href);

function open(dir) {
  const abs = path.resolve(dir);
  return fireproof("bench", {
    storeUrls: { base: `file://${abs}/fp` },
    keyBag: { url: `file://${abs}/keybag` },
  });
}

// Waits until no compaction runs or is due (see tests/fixtures/fireproof/make-fixtures.mjs).
async function settle(db) {
  const bs = db.ledger.crdt.blockstore;
  while (bs.compacting || bs.loader.carLog.length > 100) await sleep(2);
}

if (mode === "write") {
  const [load, n, dir] = [arg1, Number(arg2), arg3];
  const db = open(dir);
  await db.ready();
  const t0 = performance.now();
  if (load === "seq") {
    for (let i = 0; i < n; i++) {
      await db.put(makeDoc(i, n));
      // (An auto-compaction is scheduled 10 ms after the commit that makes the car log
      // longer than 100: give it the time to start, then wait it out.)
      if (db.ledger.crdt.blockstore.loader.carLog.length > 99) await sleep(20);
      await settle(db);
    }
  } else {
    for (let i = 0; i < n; i += 1000) {
      const docs = [];
      for (let k = i; k < Math.min(n, i + 1000); k++) docs.push(makeDoc(k, n));
      await db.bulk(docs);
      await settle(db);
    }
  }
  await sleep(50);
  await settle(db);
  const write_ms = performance.now() - t0;
  await db.close();
  console.log(JSON.stringify({ phase: "write", load, n, write_ms }));
} else if (mode === "read") {
  const [n, dir] = [Number(arg1), arg2];
  const t0 = performance.now();
  const db = open(dir);
  await db.ready();
  const t1 = performance.now();
  const all = await db.allDocs();
  const t2 = performance.now();
  if (all.rows.length !== n) throw new Error(`read ${all.rows.length} documents, expected ${n}`);
  console.log(JSON.stringify({ phase: "read", open_ms: t1 - t0, alldocs_ms: t2 - t1, docs: all.rows.length }));
  await db.close();
} else {
  console.error("usage: node fireproof-ledger.mjs write seq|bulk N DIR | read N DIR");
  process.exit(2);
}
process.exit(0);
