/**
 * Seeded randomness for the tests: FENCELOCK_SEED, or one derived from the
 * test's name; the seed is printed so that a failure can be repeated.
 */

import { createHash } from "node:crypto";

/** A small, well-known generator (mulberry32): deterministic for a seed, good enough for test data. */
export function seeded(name: string): () => number {
  const fromEnv = Number(process.env.FENCELOCK_SEED ?? 0);
  const seed = fromEnv || createHash("sha1").update(name).digest().readUInt32LE(0);
  console.log(`seed ${seed} (FENCELOCK_SEED=${seed} repeats it)`);
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
