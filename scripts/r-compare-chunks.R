# Compare what each chunk of the knitted vignettes printed with the expected
# output derived from the reference page (vignettes/expected/<vignette>/).
#
# Usage: Rscript scripts/r-compare-chunks.R <vignettes dir> <chunk outputs dir> [<html dir>] [<reference page>]
#   <chunk outputs dir>/<vignette>/<label>.txt are written while knitting when
#   PYFASTOPT_CHUNK_OUT is set (see the setup chunk of the vignettes).
# Exit status 0 when every chunk matches; 1 otherwise, naming each chunk that differs.

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: r-compare-chunks.R <vignettes dir> <chunk outputs dir> [<html dir>] [<reference page>]")
vig_dir <- args[1]
out_dir <- args[2]
html_dir <- if (length(args) >= 3) args[3] else ""
ref_page <- if (length(args) >= 4) args[4] else ""

norm_lines <- function(x) {
  x <- unlist(strsplit(paste(x, collapse = "\n"), "\n", fixed = TRUE))
  x <- gsub("[[:space:]]+", " ", trimws(x))
  x[nzchar(x)]
}
read_norm <- function(f) if (file.exists(f)) norm_lines(readLines(f, warn = FALSE)) else character()

chunk_labels <- function(rmd) {
  lines <- readLines(rmd, warn = FALSE)
  heads <- regmatches(lines, regexpr("^```\\{r[ ,]*([A-Za-z0-9_.-]+)?", lines))
  labels <- sub("^```\\{r[ ,]*", "", heads)
  if (any(!nzchar(labels))) stop(rmd, ": every chunk needs a label for the comparison")
  labels
}

html_text <- function(f) {
  h <- paste(readLines(f, warn = FALSE), collapse = "\n")
  h <- gsub("<[^>]+>", "", h)
  ents <- c("&lt;" = "<", "&gt;" = ">", "&quot;" = "\"", "&#39;" = "'", "&amp;" = "&")
  for (e in names(ents)) h <- gsub(e, ents[[e]], h, fixed = TRUE)
  paste(norm_lines(h), collapse = "\n")
}

failures <- character()
fail <- function(...) failures <<- c(failures, paste0(...))
vignettes <- list.dirs(file.path(vig_dir, "expected"), full.names = FALSE, recursive = FALSE)
if (length(vignettes) == 0) stop("no expected outputs under ", file.path(vig_dir, "expected"))
page <- if (nzchar(ref_page) && file.exists(ref_page)) {
  p <- norm_lines(readLines(ref_page, warn = FALSE))
  unique(c(p, sub("^# ", "", p)))
} else NULL

for (v in vignettes) {
  rmd <- file.path(vig_dir, paste0(v, ".Rmd"))
  exp_dir <- file.path(vig_dir, "expected", v)
  got_dir <- file.path(out_dir, v)
  labels <- setdiff(chunk_labels(rmd), "setup")
  expected_files <- sub("\\.txt$", "", list.files(exp_dir, pattern = "\\.txt$"))
  for (l in setdiff(labels, expected_files)) fail(v, "/", l, ": no expected output file ", file.path(exp_dir, paste0(l, ".txt")))
  for (l in setdiff(expected_files, labels)) fail(v, "/", l, ": expected output for a chunk the vignette does not have")
  if (!dir.exists(got_dir)) {
    fail(v, ": no recorded chunk output in ", got_dir, " (was the vignette knitted with PYFASTOPT_CHUNK_OUT set?)")
    next
  }
  sources <- if (file.exists(file.path(exp_dir, "SOURCES.tsv")))
    utils::read.delim(file.path(exp_dir, "SOURCES.tsv"), colClasses = "character") else NULL
  html <- if (nzchar(html_dir) && file.exists(file.path(html_dir, paste0(v, ".html"))))
    html_text(file.path(html_dir, paste0(v, ".html"))) else NULL
  if (nzchar(html_dir) && is.null(html)) fail(v, ": no HTML in ", html_dir)
  n_ok <- 0L
  for (l in intersect(labels, expected_files)) {
    want <- read_norm(file.path(exp_dir, paste0(l, ".txt")))
    got <- read_norm(file.path(got_dir, paste0(l, ".txt")))
    if (!identical(want, got)) {
      n <- max(length(want), length(got))
      pad <- function(x) c(x, rep("<nothing>", n - length(x)))
      d <- which(pad(want) != pad(got))
      fail(v, "/", l, ": printed output differs from the page's at line ", d[1], "\n",
           paste0("    expected: ", pad(want)[d], "\n    got:      ", pad(got)[d], collapse = "\n"))
      next
    }
    if (!is.null(html)) {
      missing_html <- want[!vapply(want, function(w) grepl(w, html, fixed = TRUE), logical(1))]
      if (length(missing_html)) fail(v, "/", l, ": not in the HTML: ", paste(missing_html, collapse = " | "))
    }
    if (!is.null(page) && !is.null(sources)) {
      row <- sources[sources$chunk == l, , drop = FALSE]
      if (nrow(row) == 1 && row$source == "page") {
        extra <- norm_lines(strsplit(row$not_on_page, "|", fixed = TRUE)[[1]])
        off <- setdiff(setdiff(want, extra), page)
        if (length(off)) fail(v, "/", l, ": expected lines not on the reference page: ", paste(off, collapse = " | "))
      }
    }
    n_ok <- n_ok + 1L
  }
  cat(sprintf("%s: %d of %d chunks print what the page shows\n", v, n_ok, length(labels)))
}

if (length(failures)) {
  cat("\nMISMATCH:\n", paste0("  ", failures, collapse = "\n"), "\n", sep = "")
  quit(status = 1)
}
cat("All chunk outputs match the reference page.\n")
