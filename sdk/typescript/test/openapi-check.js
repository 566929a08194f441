// Checks the SDK's hand-written wire types (src/wire.ts) against the
// gateway's OpenAPI document. Used by openapi.test.js, which also feeds it
// wrong types to show that it finds them.
//
// src/wire.ts tags each interface with the component it stands for:
//   @response X  the SDK reads it: every JSON type the document allows for a
//                property must be accepted by the TS type (null included),
//                and a property the document does not require must be
//                optional in TS;
//   @request X   the SDK sends it: every TS type must be allowed by the
//                document, and every property the document requires must be
//                required in TS;
//   @sse EVENT   the JSON `data` of a /stream event: the `contentSchema` of
//                that StreamEvent variant, checked as a response.
// Either way, every property the TS interface declares must exist in the
// document.

import ts from "typescript";

const ALL = new Set(["string", "number", "boolean", "null", "array", "object"]);

/** The interfaces of `source` (TypeScript text): name → { tag, value, members }. */
export function parseWire(source) {
  const file = ts.createSourceFile("wire.ts", source, ts.ScriptTarget.ES2022, true);
  const out = new Map();
  for (const st of file.statements) {
    if (!ts.isInterfaceDeclaration(st)) continue;
    let tag = null;
    let value = null;
    for (const t of ts.getJSDocTags(st)) {
      const name = t.tagName.text;
      if (name === "request" || name === "response" || name === "sse") {
        tag = name;
        value = String(t.comment ?? "").trim();
      }
    }
    const members = [];
    for (const m of st.members) {
      if (!ts.isPropertySignature(m) || !m.type) continue;
      members.push({ name: m.name.getText(file), optional: Boolean(m.questionToken), type: m.type });
    }
    out.set(st.name.text, { tag, value, members });
  }
  return out;
}

/** What a TS type node admits: { kinds, literals (string literals, or null
 * when any string), items (element type node), ref (interface name),
 * values (Record value node) }. */
function tsShape(node) {
  const shape = { kinds: new Set(), literals: [], anyString: false, items: [], refs: [], values: [] };
  const add = (n) => {
    switch (n.kind) {
      case ts.SyntaxKind.StringKeyword:
        shape.kinds.add("string");
        shape.anyString = true;
        return;
      case ts.SyntaxKind.NumberKeyword:
        shape.kinds.add("number");
        return;
      case ts.SyntaxKind.BooleanKeyword:
        shape.kinds.add("boolean");
        return;
      case ts.SyntaxKind.UnknownKeyword:
      case ts.SyntaxKind.AnyKeyword:
        for (const k of ALL) shape.kinds.add(k);
        shape.anyString = true;
        shape.unknown = true;
        return;
      case ts.SyntaxKind.LiteralType:
        if (n.literal.kind === ts.SyntaxKind.NullKeyword) shape.kinds.add("null");
        else if (ts.isStringLiteral(n.literal)) {
          shape.kinds.add("string");
          shape.literals.push(n.literal.text);
        } else if (n.literal.kind === ts.SyntaxKind.TrueKeyword || n.literal.kind === ts.SyntaxKind.FalseKeyword) shape.kinds.add("boolean");
        else shape.kinds.add("number");
        return;
      case ts.SyntaxKind.UnionType:
        n.types.forEach(add);
        return;
      case ts.SyntaxKind.ParenthesizedType:
        add(n.type);
        return;
      case ts.SyntaxKind.ArrayType:
        shape.kinds.add("array");
        shape.items.push(n.elementType);
        return;
      case ts.SyntaxKind.TypeReference: {
        const name = n.typeName.getText();
        if (name === "Record") {
          shape.kinds.add("object");
          shape.values.push(n.typeArguments[1]);
        } else if (name === "Array" || name === "ReadonlyArray") {
          shape.kinds.add("array");
          shape.items.push(n.typeArguments[0]);
        } else {
          shape.kinds.add("object");
          shape.refs.push(name);
        }
        return;
      }
      default:
        throw new Error(`openapi-check: TS type ${ts.SyntaxKind[n.kind]} (${n.getText()}) is not understood`);
    }
  };
  add(node);
  return shape;
}

function resolveRef(doc, schema) {
  let s = schema ?? {};
  let ref = null;
  while (s.$ref) {
    ref = s.$ref.replace("#/components/schemas/", "");
    s = doc.components.schemas[ref];
    if (!s) throw new Error(`openapi-check: dangling $ref ${ref}`);
  }
  return { schema: s, ref };
}

/** What a schema admits: { kinds, enum (or null), alts (each alternative
 * schema, resolved, with its ref name) }. */
function schemaShape(doc, schema) {
  const kinds = new Set();
  const alts = [];
  let enumValues = null;
  let any = false;
  const add = (raw) => {
    const { schema: s, ref } = resolveRef(doc, raw);
    const branches = s.oneOf ?? s.anyOf;
    if (branches) {
      branches.forEach(add);
      return;
    }
    const types = s.type === undefined ? null : Array.isArray(s.type) ? s.type : [s.type];
    if (types === null) {
      any = true;
      for (const k of ALL) kinds.add(k);
    } else {
      for (const t of types) kinds.add(t === "integer" ? "number" : t);
    }
    if (s.enum) enumValues = [...(enumValues ?? []), ...s.enum];
    if (s.const !== undefined) enumValues = [...(enumValues ?? []), s.const];
    alts.push({ schema: s, ref });
  };
  add(schema);
  return { kinds, enum: any ? null : enumValues, alts };
}

/** Compares one TS type node with one schema; pushes problems. */
function compareType(doc, wire, where, node, schema, dir, problems) {
  const t = tsShape(node);
  const s = schemaShape(doc, schema);
  if (dir === "response") {
    for (const k of s.kinds) {
      if (!t.kinds.has(k)) problems.push(`${where}: the document allows ${k}, the SDK's type (${node.getText()}) does not`);
    }
    if (!t.anyString && t.kinds.has("string") && s.kinds.has("string")) {
      const missing = s.enum === null ? ["any string"] : s.enum.filter((v) => typeof v === "string" && !t.literals.includes(v));
      if (missing.length) problems.push(`${where}: the document allows ${missing.join(", ")}, the SDK's type (${node.getText()}) only ${t.literals.join(", ")}`);
    }
  } else {
    for (const k of t.kinds) {
      if (t.unknown) break;
      if (!s.kinds.has(k)) problems.push(`${where}: the SDK sends ${k} (${node.getText()}), the document allows ${[...s.kinds].join(", ")}`);
    }
    if (s.enum !== null && t.kinds.has("string")) {
      if (t.anyString) problems.push(`${where}: the SDK sends any string, the document allows only ${s.enum.join(", ")}`);
      for (const lit of t.literals) {
        if (!s.enum.includes(lit)) problems.push(`${where}: the SDK sends "${lit}", not in the document's ${s.enum.join(", ")}`);
      }
    }
  }
  // Go inside arrays, maps and referenced interfaces.
  const arraySchemas = s.alts.filter((a) => a.schema.type === "array" || (Array.isArray(a.schema.type) && a.schema.type.includes("array")));
  for (const item of t.items) {
    for (const a of arraySchemas) if (a.schema.items) compareType(doc, wire, `${where}[]`, item, a.schema.items, dir, problems);
  }
  const objectSchemas = s.alts.filter((a) => a.schema.type === "object" || a.ref);
  for (const v of t.values) {
    for (const a of objectSchemas) {
      const ap = a.schema.additionalProperties;
      if (ap && typeof ap === "object") compareType(doc, wire, `${where}{}`, v, ap, dir, problems);
    }
  }
  for (const name of t.refs) {
    const iface = wire.get(name);
    if (!iface) continue; // a type from elsewhere; the kinds check above holds
    const refs = objectSchemas.map((a) => a.ref).filter(Boolean);
    if (iface.tag === "request" || iface.tag === "response") {
      if (!refs.includes(iface.value)) {
        problems.push(`${where}: the SDK's ${name} is ${iface.value}, the document has ${refs.join(", ") || "no component"} here`);
      }
    } else {
      // An untagged interface: check it against the inline object schema.
      for (const a of objectSchemas) checkObject(doc, wire, `${where}(${name})`, iface, a.schema, dir, problems);
    }
  }
}

function checkObject(doc, wire, where, iface, schema, dir, problems) {
  const props = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  for (const m of iface.members) {
    const p = props[m.name];
    if (!p) {
      problems.push(`${where}.${m.name}: not in the document (it has ${Object.keys(props).join(", ")})`);
      continue;
    }
    if (dir === "response" && !required.has(m.name) && !m.optional) {
      problems.push(`${where}.${m.name}: the document does not require it, the SDK's type does (make it optional)`);
    }
    compareType(doc, wire, `${where}.${m.name}`, m.type, p, dir, problems);
  }
  if (dir === "request") {
    for (const r of required) {
      const m = iface.members.find((x) => x.name === r);
      if (!m || m.optional) problems.push(`${where}.${r}: the document requires it, the SDK's type ${m ? "makes it optional" : "lacks it"}`);
    }
  }
}

/** Every problem between `source` (the text of src/wire.ts) and `doc`. */
export function checkWire(doc, source) {
  const wire = parseWire(source);
  const problems = [];
  let tagged = 0;
  for (const [name, iface] of wire) {
    if (!iface.tag) continue;
    tagged++;
    let schema;
    if (iface.tag === "sse") {
      const variants = doc.components.schemas.StreamEvent?.oneOf ?? [];
      const v = variants.find((x) => x.properties?.event?.enum?.includes(iface.value));
      schema = v?.properties?.data?.contentSchema;
      if (!schema) {
        problems.push(`${name}: the document has no /stream event "${iface.value}"`);
        continue;
      }
    } else {
      schema = doc.components.schemas[iface.value];
      if (!schema) {
        problems.push(`${name}: the document has no component ${iface.value}`);
        continue;
      }
    }
    checkObject(doc, wire, name, iface, schema, iface.tag === "request" ? "request" : "response", problems);
  }
  if (tagged === 0) problems.push("no tagged interface in the source");
  return problems;
}

/** Every problem between the SDK's routes and `doc`. */
export function checkRoutes(doc, routes) {
  const problems = [];
  const refName = (content) => content?.["application/json"]?.schema?.$ref?.replace("#/components/schemas/", "") ?? null;
  for (const [key, r] of Object.entries(routes)) {
    const op = doc.paths[r.path]?.[r.method.toLowerCase()];
    if (!op) {
      problems.push(`${key}: ${r.method} ${r.path} is not in the document`);
      continue;
    }
    const req = refName(op.requestBody?.content);
    if (r.request !== req) problems.push(`${key}: request body is ${req}, the SDK says ${r.request}`);
    const res = refName(op.responses?.["200"]?.content);
    if (r.response !== res) problems.push(`${key}: 200 answer is ${res}, the SDK says ${r.response}`);
  }
  return problems;
}
