// Sortable tables: a click on a header sorts the rows by that column, ascending first, then descending.
// Cells sort by their data-sort value (numbers as numbers, text in natural order); empty values stay last.
"use strict";

function sortKey(row, index) {
  const cell = row.cells[index];
  const raw = cell.dataset.sort ?? cell.textContent.trim();
  if (raw === "") return null;
  const number = Number(raw);
  return Number.isFinite(number) ? number : raw;
}

function compareKeys(a, b, ascending) {
  if (a === null || b === null) return (a === null) - (b === null);
  const order =
    typeof a === "number" && typeof b === "number"
      ? a - b
      : String(a).localeCompare(String(b), undefined, { numeric: true, sensitivity: "base" });
  return ascending ? order : -order;
}

function sortTable(table, header) {
  const index = Array.from(header.parentNode.children).indexOf(header);
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("thead th").forEach((th) => th.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => compareKeys(sortKey(a, index), sortKey(b, index), ascending));
  rows.forEach((row) => body.appendChild(row));
}

document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("thead th").forEach((header) => {
    header.addEventListener("click", () => sortTable(table, header));
  });
});
