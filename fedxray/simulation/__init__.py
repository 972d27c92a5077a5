"""A whole federation on one machine, through the same library code and files as a real one."""
