// Prisma 6.19's migration engine as WebAssembly, through a driver adapter: the native engine
// cannot be downloaded here (see docs/prisma.md, "How this is tested"). The test gives the
// schema with --schema, the migrations folder with PRISMA_MIGRATIONS and the database with
// DATABASE_URL.
import path from "node:path";
import { defineConfig } from "prisma/config";
import { PrismaPg } from "@prisma/adapter-pg";

// Trap 1: adapter-pg 6.19 refuses the catalog's "char" (OID 18) and name (OID 19) columns
// ("Column type 'name' could not be deserialized"). A name is text; a "char" (pg_constraint's
// contype) is a character, which the engine reads as one (read as text, a CHECK constraint makes
// the introspection panic).
function readCatalogTypes(adapter) {
  const queryable = Object.getPrototypeOf(Object.getPrototypeOf(adapter));
  if (queryable.__catalogTypes) return;
  const performIO = queryable.performIO;
  queryable.performIO = async function (query) {
    const result = await performIO.call(this, query);
    const chars = [];
    (result?.fields ?? []).forEach((field, i) => {
      if (field.dataTypeID === 18) chars.push(i);
      if (field.dataTypeID === 18 || field.dataTypeID === 19) field.dataTypeID = 25;
    });
    if (chars.length > 0) query.__chars = chars;
    return result;
  };
  const queryRaw = queryable.queryRaw;
  queryable.queryRaw = async function (query) {
    const result = await queryRaw.call(this, query);
    for (const i of query.__chars ?? []) result.columnTypes[i] = 6; // ColumnType.Character
    return result;
  };
  queryable.__catalogTypes = true;
}

function adapter() {
  const url = new URL(process.env.DATABASE_URL);
  // Trap 2: host, port, user and database apart, not a connectionString (with one, its shadow
  // database would be the main one).
  const factory = new PrismaPg({
    host: url.hostname,
    port: Number(url.port || 5432),
    user: decodeURIComponent(url.username),
    password: url.password ? decodeURIComponent(url.password) : undefined,
    database: url.pathname.slice(1),
    // The CLI exits when its work is done, not when idle connections time out (10 s each).
    allowExitOnIdle: true,
  });
  const connect = factory.connect.bind(factory);
  factory.connect = async () => {
    const a = await connect();
    readCatalogTypes(a);
    return a;
  };
  // Trap 3: the shadow database is dropped before its pool is ended ("database ... is being
  // accessed by other users"): end the pool first.
  factory.connectToShadowDb = async () => {
    const main = await factory.connect();
    const database = `prisma_migrate_shadow_db_${globalThis.crypto.randomUUID().replaceAll("-", "")}`;
    await main.executeScript(`CREATE DATABASE "${database}"`);
    const shadow = new PrismaPg({
      host: url.hostname,
      port: Number(url.port || 5432),
      user: decodeURIComponent(url.username),
      password: url.password ? decodeURIComponent(url.password) : undefined,
      database,
      allowExitOnIdle: true,
    });
    const a = await shadow.connect();
    readCatalogTypes(a);
    const dispose = a.dispose.bind(a);
    a.dispose = async () => {
      await dispose();
      await main.executeScript(`DROP DATABASE IF EXISTS "${database}"`);
      await main.dispose();
    };
    return a;
  };
  return factory;
}

export default defineConfig({
  experimental: { adapter: true },
  engine: "js",
  schema: process.env.PRISMA_SCHEMA ?? "schema.prisma",
  migrations: {
    path: process.env.PRISMA_MIGRATIONS ?? path.join(process.cwd(), "migrations"),
  },
  adapter: async () => adapter(),
});
