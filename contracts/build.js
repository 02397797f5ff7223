// Reproducible build of CheckpointAnchor.sol with the pinned solc-js from npm.
//   cd contracts && npm ci && node build.js
// Writes src/iotguard/hub/contracts/CheckpointAnchor.json (ABI, creation and runtime bytecode, compiler
// version and settings, SHA-256 of the source). Deterministic: no metadata
// hash in the bytecode, fixed optimizer runs and EVM version.
"use strict";
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const name = "CheckpointAnchor";
const source = fs.readFileSync(path.join(__dirname, name + ".sol"), "utf8");
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "paris",
  metadata: { bytecodeHash: "none", appendCBOR: false },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = { language: "Solidity", sources: { [name + ".sol"]: { content: source } }, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
for (const w of output.errors || []) console.error(w.formattedMessage);
const c = output.contracts[name + ".sol"][name];
const artifact = {
  contractName: name,
  compiler: { name: "solc-js", version: solc.version() },
  settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion, metadata: settings.metadata },
  sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
};
fs.writeFileSync(process.argv[2] || path.join(__dirname, "..", "src", "iotguard", "hub", "contracts", name + ".json"), JSON.stringify(artifact, null, 2) + "\n");
console.log(name + ": " + solc.version() + ", " + (c.evm.bytecode.object.length / 2) + " bytes creation code");
