/** Types for redlock 4 (the package ships none): what the benchmark uses. */
declare module "redlock" {
  interface Lock {
    unlock(): Promise<void>;
  }
  interface Options {
    driftFactor?: number;
    retryCount?: number;
    retryDelay?: number;
    retryJitter?: number;
  }
  export default class Redlock {
    constructor(clients: unknown[], options?: Options);
    lock(resource: string, ttl: number): Promise<Lock>;
    on(event: "clientError", listener: (error: unknown) => void): this;
  }
}
