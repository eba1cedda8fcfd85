// Renders ```mermaid blocks in the browser. The build itself needs no network; a reader
// without network access sees the diagram's source text instead.
import mermaid from "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs";

for (const code of document.querySelectorAll("pre > code.language-mermaid")) {
  const div = document.createElement("div");
  div.className = "mermaid";
  div.textContent = code.textContent;
  code.parentElement.replaceWith(div);
}
mermaid.initialize({ startOnLoad: false });
await mermaid.run({ querySelector: "div.mermaid" });
