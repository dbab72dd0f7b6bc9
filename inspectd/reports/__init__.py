"""What people read from results: per-field files of `inspectd analyze` (`report`), Excel/CSV
workbooks (`workbook`), control-chart rules (`spc`) and accuracy reports (`evaluate`)."""
