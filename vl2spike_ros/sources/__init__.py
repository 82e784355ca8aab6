"""Where frames come from: image folders, rosbag2 files and pose files."""
