"""Settings that make a whole job take seconds on a CPU (tiny field, tiny renders, few steps)."""

TINY = {
    "resolution": 16,
    "optim": {"iters": 12},
    "refine": {"iters": 3, "resolution": 32},
    "mesh": {"iters": 0},
    "nerf": {"levels": 4, "log2_table_size": 12, "max_resolution": 64, "hidden_dim": 32},
    "render": {"samples": 16},
    "export": {"grid_resolution": 32, "texture_size": 64, "max_faces": 2000, "density_threshold": 2.0},
    "loop": {"checkpoint_every": 5},
}
