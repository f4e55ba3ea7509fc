// The Khronos glTF validator's report of one GLB, as JSON on standard output: node gltf_validate.js FILE.glb
const fs = require("fs");
const validator = require("gltf-validator");

validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), { maxIssues: 50 })
    .then((report) => console.log(JSON.stringify(report.issues)))
    .catch((error) => { console.error(String(error)); process.exit(1); });
