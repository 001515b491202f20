// node-postgres named (prepared) queries through a transaction-mode pgveil pool: many clients, few backends.
// Usage: node named_queries.mjs HOST PORT TOKEN CLIENTS
import pg from "pg";

const [host, port, token, n] = [process.argv[2], Number(process.argv[3]), process.argv[4], Number(process.argv[5])];

async function client(i) {
  const c = new pg.Client({ host, port, user: "node", password: token, database: "acme", ssl: false });
  await c.connect();
  for (let k = 0; k < 15; k++) {
    const x = i * 100 + k;
    if (k % 3 === 0) await c.query("BEGIN");
    const r = await c.query({ name: "triple", text: "SELECT $1::int * 3 AS v", values: [x] });
    if (r.rows[0].v !== x * 3) throw new Error(`client ${i}: triple(${x}) = ${r.rows[0].v}`);
    const e = await c.query({ name: "payer-email", text: "SELECT email FROM payers WHERE id = $1", values: [(k % 40) + 1] });
    if (e.rows.length !== 1 || !e.rows[0].email) throw new Error(`client ${i}: no payer ${(k % 40) + 1}`);
    if (k % 3 === 0) await c.query("COMMIT");
  }
  await c.end();
}

await Promise.all(Array.from({ length: n }, (_, i) => client(i)));
console.log("ok");
