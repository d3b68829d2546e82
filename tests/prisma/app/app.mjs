// Plays the web app with Prisma Client 7 and @prisma/adapter-pg, as its webhook and its pages do.
// Called by tests/integration/prisma.rs; prints one JSON document on stdout.
//
//   node app.mjs insert --schema cuid|uuid|serial --count N --request-id R [--key K] [--many]
//       N jobs (`create` each, or one `createMany`), the i-th with idempotency key K-i when K is
//       given; prints {"ids": [...]} (the app's own ids, as strings).
//   node app.mjs find --schema KIND --status S
//       prisma.outboundJob.findMany({ where: { status: S } }); prints [{id, status, updatedAt,
//       completedAt}] (ids as strings, times as ISO 8601 UTC).
//
// DATABASE_URL names the database.
import { createRequire } from "node:module";
import { parseArgs } from "node:util";
import { PrismaPg } from "@prisma/adapter-pg";

const require = createRequire(import.meta.url);
const [command, ...rest] = process.argv.slice(2);
const { values: args } = parseArgs({
  args: rest,
  options: {
    schema: { type: "string" },
    count: { type: "string", default: "1" },
    "request-id": { type: "string" },
    key: { type: "string" },
    many: { type: "boolean", default: false },
    status: { type: "string" },
    to: { type: "string", default: "15551230000" },
  },
});
if (!["cuid", "uuid", "serial"].includes(args.schema)) {
  console.error("--schema must be cuid, uuid or serial");
  process.exit(64);
}
const { PrismaClient } = require(`./generated/${args.schema}/index.js`);
const prisma = new PrismaClient({
  adapter: new PrismaPg({ connectionString: process.env.DATABASE_URL }),
});

function job(i) {
  const data = {
    status: "queued",
    payload: {
      to: args.to,
      message: { type: "text", text: { body: `hello ${i} from the app` } },
    },
    requestId: args["request-id"] ?? null,
  };
  if (args.key) data.idempotencyKey = `${args.key}-${i}`;
  return data;
}

try {
  if (command === "insert") {
    const n = Number(args.count);
    const jobs = Array.from({ length: n }, (_, i) => job(i));
    let ids;
    if (args.many) {
      const made = await prisma.outboundJob.createManyAndReturn({ data: jobs, select: { id: true } });
      ids = made.map((r) => String(r.id));
    } else {
      ids = [];
      for (const data of jobs) {
        const made = await prisma.outboundJob.create({ data, select: { id: true } });
        ids.push(String(made.id));
      }
    }
    console.log(JSON.stringify({ ids }));
  } else if (command === "find") {
    const rows = await prisma.outboundJob.findMany({
      where: { status: args.status },
      select: { id: true, status: true, updatedAt: true, completedAt: true },
      orderBy: { createdAt: "asc" },
    });
    console.log(
      JSON.stringify(
        rows.map((r) => ({
          id: String(r.id),
          status: r.status,
          updatedAt: r.updatedAt?.toISOString() ?? null,
          completedAt: r.completedAt?.toISOString() ?? null,
        })),
      ),
    );
  } else {
    console.error(`unknown command ${command}: insert or find`);
    process.exitCode = 64;
  }
} catch (e) {
  console.error(String(e?.stack ?? e));
  process.exitCode = 1;
} finally {
  await prisma.$disconnect();
}
