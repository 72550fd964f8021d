/**
 * `await using` calls `Symbol.asyncDispose`. Node 20 defines it; on a
 * runtime that does not, this defines it (as the TypeScript helpers expect)
 * before any class here uses it as a method name: imported first by the
 * modules that do.
 */

if (typeof Symbol.asyncDispose !== "symbol") {
  Object.defineProperty(Symbol, "asyncDispose", { value: Symbol.for("Symbol.asyncDispose") });
}

export {};
