/** Types for cluster-key-slot (the package ships none): Redis Cluster's CRC16 hash slot of a key. */
declare module "cluster-key-slot" {
  export default function calculateSlot(key: string | Buffer): number;
}
